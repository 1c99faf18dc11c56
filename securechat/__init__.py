"""securechat: a self-hostable, end-to-end encrypted chat relay and client."""

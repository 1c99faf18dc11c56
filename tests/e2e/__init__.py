"""End-to-end tests: the real ``twistd -n securechat`` daemon and a real TLS client."""

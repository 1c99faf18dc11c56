"""The securechat twistd plugin: ``twistd -n securechat --config etc/server.toml``."""

from twisted.application.service import ServiceMaker

securechat = ServiceMaker(
    "securechat",
    "securechat.tap",
    "End-to-end encrypted chat relay (TLS 1.3, store-and-forward)",
    "securechat",
)

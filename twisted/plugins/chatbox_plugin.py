"""twistd discovers chatbox here; everything heavy is imported only when used."""

from twisted.application.service import ServiceMaker

chatbox = ServiceMaker(
    "chatbox",
    "chatbox.tap",
    "WebSocket chat server speaking the classic-chatbox v2 protocol",
    "chatbox",
)

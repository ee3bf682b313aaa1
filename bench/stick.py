"""The measuring stick: the least a Twisted + Autobahn chat server can do.

Register and send only, history in a list, no disk, no validation beyond
what the load generator needs, one prepared frame per broadcast. Replies
have chatbox's shapes, so bench/load.py drives both unchanged. Not shipped,
not for use: it only shows what this stack can do on this machine.

    python bench/stick.py PORT
"""

import sys
import time

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class Stick(WebSocketServerProtocol):
    name = None

    def onOpen(self) -> None:
        self.factory.clients.add(self)

    def onClose(self, wasClean, code, reason) -> None:
        self.factory.clients.discard(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        request = orjson.loads(payload)
        stamp = time.strftime("%d/%m/%Y, %H:%M:%S")
        if request["type"] == "name":
            self.name = request["name"]
            self.sendMessage(
                orjson.dumps(
                    {
                        "type": "name",
                        "action": "register",
                        "name": self.name,
                        "status": True,
                        "timestamp": stamp,
                    }
                )
            )
        elif request["type"] == "send":
            factory = self.factory
            factory.history.append(request["content"])
            message_id = len(factory.history)
            self.sendMessage(
                orjson.dumps(
                    {
                        "type": "send",
                        "name": self.name,
                        "content": request["content"],
                        "status": True,
                        "timestamp": stamp,
                        "id": message_id,
                    }
                )
            )
            prepared = factory.prepareMessage(
                orjson.dumps(
                    {
                        "type": "receive",
                        "datatype": "message",
                        "name": self.name,
                        "content": request["content"],
                        "timestamp": stamp,
                        "id": message_id,
                    }
                )
            )
            for client in factory.clients:
                if client is not self and client.name is not None:
                    client.sendPreparedMessage(prepared)


def main() -> None:
    factory = WebSocketServerFactory()
    factory.protocol = Stick
    factory.clients = set()
    factory.history = []
    port = reactor.listenTCP(
        int(sys.argv[1]) if len(sys.argv) > 1 else 0, factory, interface="127.0.0.1"
    )
    print(f"stick listening on ws://127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()

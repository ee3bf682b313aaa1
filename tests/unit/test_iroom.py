"""Both backends are whole IRooms: a method added to chatbox.chat.room.IRoom
and forgotten in one backend fails here, not in production."""

from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from chatbox.chat.room import IRoom
from chatbox.cluster.commands import Commands
from chatbox.cluster.keys import Keys
from chatbox.cluster.lease import Lease
from chatbox.cluster.reader import EventReader
from chatbox.cluster.room import RedisRoom
from chatbox.local.room import LocalRoom
from chatbox.local.store import DurableStore
from tests.unit.test_cluster_units import FakeLink


def test_the_local_room_is_an_iroom(tmp_path):
    store = DurableStore(str(tmp_path / "data.json"), MemoryReactorClock())
    assert verifyObject(IRoom, LocalRoom(store, MemoryReactorClock().seconds))


def test_the_cluster_room_is_an_iroom():
    clock = MemoryReactorClock()
    keys = Keys.under()
    commands = Commands(FakeLink(), keys)
    room = RedisRoom(
        commands,
        EventReader(FakeLink(), keys, clock),
        Lease(commands, clock, "n1"),
        clock,
    )
    assert verifyObject(IRoom, room)

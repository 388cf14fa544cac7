"""This project's rooms: an example of the realtime.py an application writes.

identity imports a module named ``realtime.py`` from every installed app at
startup, as the admin imports ``admin.py``; declaring a topic is all it takes.
A client then subscribes with ``{"action": "subscribe", "payload": {"topic":
"room.lobby"}}`` and publishes with ``publish`` (docs/protocol.md).
"""

from __future__ import annotations

from identity.realtime import topic

# Every signed-in user may join (no `allow`, no `permission`), see who else is
# in the room (`presence`) and write to it from the browser (`client_publish`).
topic("room.lobby", presence=True, client_publish=True)

# Staff only. A rule on `is_staff` ("Staff status" in the admin), not a Django
# permission: a superuser passes every permission check, with or without staff
# status, while this room follows that one tick box. Untick it and the user's
# open subscription ends at once (`unsubscribed`, reason `forbidden`).
topic(
    "room.staff",
    allow=lambda user: user.is_staff,
    presence=True,
    client_publish=True,
)

"""This project's rooms: the example of a `realtime.py` (docs/realtime.md).

identity imports a module of this name from every installed app at startup,
as the admin imports `admin.py`. Only the public API is used here.
"""

from identity.realtime import topic

# Everyone signed in may join the lobby, see who else is in it, and write to it.
topic("room.lobby", presence=True, client_publish=True)

# Staff only. Checked when a socket subscribes and again whenever the user's
# rights change (an operator unticks "Staff status" in the admin): the page
# then gets `unsubscribed` `forbidden` and the room goes away. A rule on
# `is_staff` rather than a `permission=`: a superuser passes every permission
# check, staff or not, while this room follows the one tick box.
topic("room.staff", allow=lambda user: user.is_staff, presence=True, client_publish=True)

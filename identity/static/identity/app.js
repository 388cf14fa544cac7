// The page's UI: binds IdentityClient events to the DOM and forms to client
// calls. Every piece of text that came from a user or the server goes in with
// textContent, never innerHTML, so a username cannot carry markup.

import { HttpError, IdentityClient, IdentityError } from "./client.js";

const MAX_LOG_ENTRIES = 200;

// The rooms this project declares in config/realtime.py, built only on the
// public topic API. A server without one answers `unknown_topic` and the room
// stays hidden (the whole section when it has none).
const ROOMS = [
  {
    key: "lobby",
    topic: "room.lobby",
    name: "Lobby",
    about: "Everyone who is signed in is here.",
    label: "Message to everyone in the lobby",
    send: "Send to lobby",
    lost: "You no longer have access to the lobby.",
  },
  {
    key: "staff",
    topic: "room.staff",
    name: "Staff room",
    about: "Only staff see this room.",
    label: "Message to the staff room",
    send: "Send to staff",
    lost: "You no longer have access to the staff room.",
  },
];
// Subscribe failures the next sign-in on this socket retries (the rest hide the room).
const RETRYABLE = new Set(["not_connected", "connection_closed", "timeout", "service_unavailable"]);

// Why the server (or the client) ended a session, in words for the person.
const REASONS = {
  kicked: "An administrator signed you out.",
  user_inactive: "Your account has been deactivated.",
  user_deleted: "Your account no longer exists.",
  token_revoked: "Your session was revoked (a password change or an administrator). Please sign in again.",
  too_many_attempts: "Too many failed sign-in attempts on this connection. Please sign in again.",
  rate_limited: "You were sending too fast and were disconnected. Please sign in again.",
  session_expired: "Your session has expired. Please sign in again.",
  connection_limit: "You are connected from too many places at once.",
};
const GENERIC_REASON = "You have been signed out. Please sign in again.";
const UNREACHABLE = "Could not reach the server. Check the connection and try again.";

const el = (id) => document.getElementById(id);
const client = new IdentityClient();
const online = new Map(); // user id -> username
// topic -> {spec, status, members: Map(id -> username), fresh, view}; status is
// one of idle, joining, joined, refused (forbidden from the start), removed
// (the right was taken away), absent (the server has no such topic). `fresh`:
// the member list came from the server since the connection was last lost.
const rooms = new Map();
let roomsJoined = Promise.resolve();
let countdownTimer = null;

// ---- connection state ------------------------------------------------------

// Said calmly: a lost connection is retried on its own, and the person can
// hurry it. Only the words in #conn-state (a live region) are announced, and
// they change with the state alone; the ticking countdown sits beside them.
let reconnecting = false; // an identity was online and the client is getting it back

function stateView() {
  const { state, retryAt } = client;
  if (state === "online") reconnecting = false;
  else if (!client.signedIn) reconnecting = false;
  else if (state === "offline" && retryAt !== null) reconnecting = true;

  if (!client.signedIn && state !== "connecting") return { key: "signedout", words: "Not signed in" };
  if (state === "online") return { key: "online", words: "Online" };
  if (reconnecting) return { key: "reconnecting", words: "Reconnecting" };
  if (state === "connecting") return { key: "connecting", words: "Connecting…" };
  return { key: "offline", words: "Offline" };
}

function countdownText() {
  if (!reconnecting) return "";
  if (client.state !== "offline" || client.retryAt === null) return "…";
  const seconds = Math.max(0, Math.ceil((client.retryAt - Date.now()) / 1000));
  return seconds > 0 ? `in ${seconds} s…` : "…";
}

function renderState() {
  const { key, words } = stateView();
  el("conn").dataset.state = key;
  // Assigning the same text again would not be announced, but skip it anyway.
  if (el("conn-state").textContent !== words) el("conn-state").textContent = words;
  el("conn-countdown").textContent = countdownText();
  el("retry-now").hidden = !(reconnecting && client.state === "offline");
}

/** Tick the countdown only while a retry is pending. */
function syncCountdown() {
  const counting = client.state === "offline" && client.retryAt !== null;
  if (counting && countdownTimer === null) {
    countdownTimer = setInterval(renderState, 250);
  } else if (!counting && countdownTimer !== null) {
    clearInterval(countdownTimer);
    countdownTimer = null;
  }
}

/** What needs a live identity is disabled, and the online list says it may be stale. */
function renderAvailability() {
  const live = client.state === "online";
  for (const button of document.querySelectorAll("[data-needs-online]")) button.disabled = !live;
  el("session").dataset.state = client.state;
  el("offline-note").hidden = live || !client.signedIn;
  el("online-note").hidden = live || !client.signedIn;
  el("online-list").classList.toggle("stale", !live);
  renderRoomsFreshness();
}

function onState() {
  if (client.state !== "online") for (const room of rooms.values()) room.fresh = false;
  renderState();
  syncCountdown();
  renderAvailability();
}

// ---- views -----------------------------------------------------------------

function showSignIn(errorText = "") {
  el("session").hidden = true;
  el("signin").hidden = false;
  el("signin-error").textContent = errorText;
  el("username").focus();
}

function showSession() {
  el("signin").hidden = true;
  el("session").hidden = false;
  el("signin-error").textContent = "";
  el("signed-in").textContent = client.user ? signedInText(client.user) : "Signing in…";
}

function signedInText(user) {
  return `Signed in as ${user.username}`;
}

function renderExpiry(expiresAt) {
  const time = el("expires");
  const when = new Date(expiresAt * 1000);
  time.dateTime = when.toISOString();
  time.textContent = when.toLocaleTimeString();
}

function clearSessionView() {
  // The next person at this screen should not find the last one's words.
  for (const id of ["message-input", "direct-to", "direct-text", "username", "password"]) {
    el(id).value = "";
  }
  el("log").replaceChildren();
  el("expires").textContent = "";
  el("expires").removeAttribute("datetime");
  online.clear();
  renderOnline();
  resetRooms();
}

/** After signing in, the first box to write in: the first room's, else the direct message. */
function focusFirstBox() {
  const room = [...rooms.values()].find(({ status }) => status === "joined");
  (room ? room.view.input : el("direct-to")).focus();
}

// ---- log -------------------------------------------------------------------

/** Append one entry to the private log; `parts` are [className, text] pairs. */
function log(kind, ...parts) {
  appendLine(el("log"), kind, parts);
}

/** Append a timestamped line to a list (the log, a room's messages); keep the last few hundred. */
function appendLine(list, kind, parts) {
  const entry = document.createElement("li");
  entry.className = kind;
  const now = new Date();
  const time = document.createElement("time");
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  entry.append(time);
  for (const [className, text] of parts) {
    const span = document.createElement("span");
    if (className) span.className = className;
    span.textContent = text;
    entry.append(span);
  }
  list.append(entry);
  while (list.childElementCount > MAX_LOG_ENTRIES) list.firstElementChild.remove();
  entry.scrollIntoView({ block: "nearest" });
}

function logProblem(what, err, list = el("log")) {
  appendLine(list, "problem", [["", `${what}: ${describeError(err)}`]]);
}

function describeError(err) {
  if (err?.code === "not_connected" || err?.code === "connection_closed") return "not connected";
  if (err?.code === "user_not_found") return "no such user";
  return err?.message || "failed";
}

// ---- online list -----------------------------------------------------------

function renderOnline() {
  renderNames(el("online-list"), online);
}

/** A list of people (id -> username), by name; each name addresses a direct message. */
function renderNames(list, people) {
  const items = [...people.entries()]
    .sort(([, a], [, b]) => a.localeCompare(b))
    .map(([id, username]) => {
      const item = document.createElement("li");
      const name = document.createElement("button");
      name.type = "button";
      name.className = "name";
      name.textContent = username;
      name.addEventListener("click", () => writeTo(username));
      item.append(name);
      if (id === client.user?.id) item.classList.add("me");
      return item;
    });
  list.replaceChildren(...items);
}

/** A name from the online list becomes the direct message's recipient. */
function writeTo(username) {
  el("direct-to").value = username;
  el("direct-text").focus();
}

function onPresence(payload) {
  if (Array.isArray(payload?.users)) {
    online.clear();
    for (const { id, username } of payload.users) online.set(id, username);
  } else if (payload?.event === "online") {
    online.set(payload.user.id, payload.user.username);
  } else if (payload?.event === "offline") {
    online.delete(payload.user.id);
  }
  renderOnline();
}

// ---- rooms -----------------------------------------------------------------

/** A room's section, cloned from #room-template, with ids of its own. */
function buildRoom(spec) {
  const section = el("room-template").content.firstElementChild.cloneNode(true);
  const part = (name) => section.querySelector(`.room-${name}`);
  const id = (name) => `room-${spec.key}-${name}`;
  section.id = id("section");
  part("name").id = id("name");
  part("name").textContent = spec.name;
  part("about").textContent = spec.about;
  part("messages-title").id = id("messages-title");
  part("members-title").id = id("members-title");
  // "Lobby Messages", "Lobby Here now": one name per room for each list.
  part("messages").id = id("messages");
  part("messages").setAttribute("aria-labelledby", `${id("name")} ${id("messages-title")}`);
  part("members").id = id("members");
  part("members").setAttribute("aria-labelledby", `${id("name")} ${id("members-title")}`);
  part("label").htmlFor = id("input");
  part("label").textContent = spec.label;
  part("input").id = id("input");
  part("send").id = id("send");
  part("send").textContent = spec.send;
  part("form").id = id("form");
  part("form").setAttribute("aria-labelledby", id("name"));
  part("form").addEventListener("submit", (event) => onRoomSubmit(event, spec.topic));
  section.setAttribute("aria-labelledby", id("name"));
  section.hidden = true;
  el("room-list").append(section);
  return { section, messages: part("messages"), members: part("members"), input: part("input") };
}

function renderRooms() {
  for (const room of rooms.values()) {
    room.view.section.hidden = room.status !== "joined";
    room.view.section.dataset.status = room.status; // for tests and styles
  }
  const anyJoined = [...rooms.values()].some(({ status }) => status === "joined");
  el("rooms").hidden = !anyJoined && el("rooms-note").textContent === "";
}

/** A member list is grey from a lost connection until the server lists the room again. */
function renderRoomsFreshness() {
  const live = client.state === "online";
  for (const room of rooms.values()) {
    room.view.members.classList.toggle("stale", !(live && room.fresh));
  }
}

/** Join every room not joined yet; after each `auth` (the client re-joins the ones it holds). */
function joinRooms() {
  return Promise.all([...rooms.values()].map(joinRoom));
}

async function joinRoom(room) {
  if (room.status !== "idle") return;
  room.status = "joining";
  try {
    await client.subscribe(room.spec.topic); // the member list comes as a `members` event
    room.status = "joined";
  } catch (err) {
    room.status = RETRYABLE.has(err.code) ? "idle" : err.code === "forbidden" ? "refused" : "absent";
    if (err.code === "service_unavailable") logProblem(`Joining ${room.spec.name}`, err);
  }
  renderRooms();
}

function inRoom(topic) {
  const room = rooms.get(topic);
  return room && (room.status === "joining" || room.status === "joined") ? room : null;
}

function onMembers({ topic, members, event, user }) {
  const room = inRoom(topic);
  if (!room) return;
  if (Array.isArray(members)) {
    // The whole list: a (re-)subscription's reply, after a reconnect too.
    room.members.clear();
    for (const { id, username } of members) room.members.set(id, username);
    room.fresh = true;
    renderRoomsFreshness();
  } else if (event === "join") {
    room.members.set(user.id, user.username); // idempotent: our own join may come twice
  } else if (event === "leave") {
    room.members.delete(user.id);
  }
  renderNames(room.view.members, room.members);
}

function onRoomEvent({ topic, event, data, from }) {
  const room = inRoom(topic);
  // Anyone may publish anything to a room; the page shows text messages only.
  if (!room || event !== "message" || typeof data?.text !== "string") return;
  const who = from?.username ?? "server";
  appendLine(room.view.messages, "message", [["who", who], ["", ": "], ["text", data.text]]);
}

/** The server ended a subscription: the right was taken away (or the room is gone). */
function onUnsubscribed({ topic, reason }) {
  const room = inRoom(topic);
  // "identity": the socket is signing in again; the client re-joins by itself.
  if (!room || reason === "identity") return;
  const hadFocus = room.view.section.contains(document.activeElement);
  room.status = reason === "forbidden" ? "removed" : "absent";
  clearRoom(room);
  if (reason === "forbidden") el("rooms-note").textContent = room.spec.lost;
  renderRooms();
  // Focus must not vanish with the room: it goes to the note that says why.
  if (hadFocus) el("rooms-note").focus();
}

function clearRoom(room) {
  room.members.clear();
  room.view.members.replaceChildren();
  room.view.messages.replaceChildren();
  room.view.input.value = "";
}

function resetRooms() {
  for (const room of rooms.values()) {
    room.status = "idle";
    clearRoom(room);
  }
  el("rooms-note").textContent = "";
  renderRooms();
}

async function onRoomSubmit(event, topic) {
  event.preventDefault();
  const room = rooms.get(topic);
  const input = room.view.input;
  try {
    // Everyone in the room gets it, this page included: it shows when it comes back.
    await client.publish(topic, { text: input.value }, "message");
    input.value = "";
  } catch (err) {
    logProblem("Not sent", err, room.view.messages);
  }
}

function setUpRooms() {
  for (const spec of ROOMS) {
    const room = { spec, status: "idle", members: new Map(), fresh: false, view: buildRoom(spec) };
    rooms.set(spec.topic, room);
  }
}

// ---- client events ---------------------------------------------------------

function onIdentity({ user, expiresAt }) {
  showSession();
  el("signed-in").textContent = signedInText(user);
  renderExpiry(expiresAt);
  // Subscribes this socket to presence pushes; needed after every auth
  // because a new socket (or a new identity) starts unsubscribed.
  client.presence().catch((err) => logProblem("Online list", err));
  roomsJoined = joinRooms();
}

function onSignedOut({ reason }) {
  clearSessionView();
  showSignIn(reason === "signed_out" ? "" : (REASONS[reason] ?? GENERIC_REASON));
}

function bindClient() {
  client.on("state", onState);
  client.on("identity", onIdentity);
  client.on("signedout", onSignedOut);
  client.on("presence", onPresence);
  client.on("members", onMembers);
  client.on("event", onRoomEvent);
  client.on("unsubscribed", onUnsubscribed);
  client.on("message", ({ text, user }) =>
    log("message", ["tag", "echo"], ["", " "], ["who", user.username], ["", ": "], ["text", text]),
  );
  client.on("direct", ({ from, text }) =>
    log(
      "direct",
      ["tag", "direct"],
      ["", " "],
      ["who", from.username],
      ["", " → you: "],
      ["text", text],
    ),
  );
  client.on("error", (err) => logProblem("Server", err));
}

// ---- forms -----------------------------------------------------------------

async function onSignIn(event) {
  event.preventDefault();
  const button = event.submitter ?? el("signin-form").querySelector("button");
  button.disabled = true;
  el("signin-error").textContent = "";
  try {
    // Resolves once the server has registered the identity on the socket.
    await client.signIn(el("username").value, el("password").value);
    el("password").value = "";
    showSession();
    await roomsJoined; // started by the `identity` event, before signIn() resolved
    focusFirstBox();
  } catch (err) {
    if (!(err instanceof IdentityError && err.code === "cancelled")) {
      el("signin-error").textContent = signInErrorText(err);
    }
  } finally {
    button.disabled = false;
  }
}

function signInErrorText(err) {
  if (err instanceof HttpError) {
    // SimpleJWT's own words ("No active account found...") are not for people.
    if (err.status === 401) return "Wrong username or password.";
    if (err.status === 429) {
      const wait = err.retryAfter === null ? "a minute" : `${Math.max(1, err.retryAfter)} s`;
      return `Too many attempts, try again in ${wait}.`;
    }
    return `The server could not sign you in (HTTP ${err.status}). Try again in a moment.`;
  }
  if (err instanceof IdentityError && !["connection_failed", "timeout"].includes(err.code)) {
    return REASONS[err.code] ?? `The server refused the sign-in: ${err.message}`;
  }
  return UNREACHABLE;
}

async function onMessage(event) {
  event.preventDefault();
  const input = el("message-input");
  try {
    await client.sendMessage(input.value);
    input.value = "";
  } catch (err) {
    logProblem("Message not sent", err);
  }
}

async function onDirect(event) {
  event.preventDefault();
  const to = el("direct-to").value.trim();
  const input = el("direct-text");
  const text = input.value;
  try {
    const reply = await client.sendDirect(to, text);
    const note = reply.online ? "" : ` (${reply.to} is not online)`;
    log(
      "direct sent",
      ["tag", "direct"],
      ["", " you → "],
      ["who", reply.to],
      ["", ": "],
      ["text", text],
      ["note", note],
    );
    input.value = "";
  } catch (err) {
    logProblem(`Direct message to ${to} not sent`, err);
  }
}

async function onSignOut() {
  el("signout").disabled = true;
  try {
    await client.signOut();
  } finally {
    el("signout").disabled = false;
  }
}

function bindForms() {
  el("signin-form").addEventListener("submit", onSignIn);
  el("message-form").addEventListener("submit", onMessage);
  el("direct-form").addEventListener("submit", onDirect);
  el("signout").addEventListener("click", onSignOut);
  el("retry-now").addEventListener("click", () => client.retryNow());
  // Back from a network outage: no need to wait out the backoff delay.
  window.addEventListener("online", () => client.retryNow());
}

// ---- start -----------------------------------------------------------------

setUpRooms();
bindClient();
bindForms();
if (client.start()) {
  showSession();
} else {
  showSignIn();
}
onState();

// The page's UI: binds IdentityClient events to the DOM and forms to client
// calls. Every piece of text that came from a user or the server goes in with
// textContent, never innerHTML, so a username cannot carry markup.

import { HttpError, IdentityClient } from "./client.js";

const MAX_LOG_ENTRIES = 200;

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

const el = (id) => document.getElementById(id);
const client = new IdentityClient();
const online = new Map(); // user id -> username
let countdownTimer = null;

// ---- connection state ------------------------------------------------------

function renderState() {
  const { state, retryAt } = client;
  const line = el("conn-state");
  line.dataset.state = state;
  if (state !== "offline") {
    line.textContent = state;
  } else if (retryAt !== null) {
    const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    line.textContent = `offline — next retry in ${seconds} s`;
  } else {
    line.textContent = client.signedIn ? "offline" : "offline — not signed in";
  }
}

/** Tick the "next retry in N s" countdown only while a retry is pending. */
function syncCountdown() {
  const counting = client.state === "offline" && client.retryAt !== null;
  if (counting && countdownTimer === null) {
    countdownTimer = setInterval(renderState, 250);
  } else if (!counting && countdownTimer !== null) {
    clearInterval(countdownTimer);
    countdownTimer = null;
  }
}

function onState() {
  renderState();
  syncCountdown();
  el("session").dataset.state = client.state;
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
  el("log").replaceChildren();
  el("expires").textContent = "";
  el("expires").removeAttribute("datetime");
  online.clear();
  renderOnline();
}

// ---- log -------------------------------------------------------------------

/** Append one entry; `parts` are [className, text] pairs joined in order. */
function log(kind, ...parts) {
  const entry = document.createElement("li");
  entry.className = kind;
  for (const [className, text] of parts) {
    const span = document.createElement("span");
    if (className) span.className = className;
    span.textContent = text;
    entry.append(span);
  }
  const list = el("log");
  list.append(entry);
  while (list.childElementCount > MAX_LOG_ENTRIES) list.firstElementChild.remove();
  entry.scrollIntoView({ block: "nearest" });
}

function logProblem(what, err) {
  log("problem", ["", `${what}: ${describeError(err)}`]);
}

function describeError(err) {
  if (err?.code === "not_connected" || err?.code === "connection_closed") return "not connected";
  if (err?.code === "user_not_found") return "no such user";
  return err?.message || "failed";
}

// ---- online list -----------------------------------------------------------

function renderOnline() {
  const items = [...online.entries()]
    .sort(([, a], [, b]) => a.localeCompare(b))
    .map(([id, username]) => {
      const item = document.createElement("li");
      item.textContent = username;
      if (id === client.user?.id) item.classList.add("me");
      return item;
    });
  el("online-list").replaceChildren(...items);
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

// ---- client events ---------------------------------------------------------

function onIdentity({ user, expiresAt }) {
  showSession();
  el("signed-in").textContent = signedInText(user);
  renderExpiry(expiresAt);
  // Subscribes this socket to presence pushes; needed after every auth
  // because a new socket (or a new identity) starts unsubscribed.
  client.presence().catch((err) => logProblem("Online list", err));
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
  client.on("message", ({ text, user }) => log("message", ["who", user.username], ["", ": "], ["text", text]));
  client.on("direct", ({ from, text }) =>
    log("direct", ["who", from.username], ["", " → you: "], ["text", text]),
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
    await client.signIn(el("username").value, el("password").value);
    el("password").value = "";
    showSession();
  } catch (err) {
    el("signin-error").textContent = signInErrorText(err);
  } finally {
    button.disabled = false;
  }
}

function signInErrorText(err) {
  if (err instanceof HttpError && err.status === 401) return err.detail || "Wrong username or password.";
  if (err instanceof HttpError) return err.detail || `The server answered ${err.status}.`;
  return "Could not reach the server. Check the connection and try again.";
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
    log("direct sent", ["", "you → "], ["who", reply.to], ["", ": "], ["text", text], ["note", note]);
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
  // Back from a network outage: no need to wait out the backoff delay.
  window.addEventListener("online", () => client.retryNow());
}

// ---- start -----------------------------------------------------------------

bindClient();
bindForms();
if (client.start()) {
  showSession();
} else {
  showSignIn();
}
onState();

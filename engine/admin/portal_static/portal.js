// The customer's webhook page: a client of the engine's documented /v1 API, nothing more.
//
// Opened as /portal#token=<token>[&account=<id>]. The token is read from the fragment (which no
// browser sends to a server), removed from the address bar, and kept in this module's memory
// only: no cookie, no storage (an iframe on another site's page may have neither). `account` is
// for the operator's token, which sees every account; a portal token is confined to its own.
//
// Every piece of data is put on the page as text (textContent, text nodes, attribute values):
// endpoint descriptions and receivers' answers are untrusted, and no HTML is ever built from them.

const PAGE_SIZE = 20;
const GRACE_CHOICES = [
  [0, "Stop signing with the old secret now"],
  [3600, "Keep the old secret for 1 hour"],
  [86400, "Keep the old secret for 24 hours"],
  [259200, "Keep the old secret for 3 days"],
  [604800, "Keep the old secret for 7 days"],
];
const DEFAULT_GRACE_S = 86400;
const STATUSES = ["pending", "in_flight", "retrying", "delivered", "failed", "cancelled"];
const STATUS_WORDS = {
  pending: "Pending",
  in_flight: "Sending",
  retrying: "Retrying",
  delivered: "Delivered",
  failed: "Failed",
  cancelled: "Cancelled",
};

const session = { token: null, account: null };
const features = { catalogue: false, testEvents: false, session: false, accepted: false };
let catalogue = []; // [{name, description}] when the API has the event catalogue
let endpointsById = new Map();
const main = () => document.getElementById("main");

// -- small helpers ------------------------------------------------------------------------------

/** An element with attributes, event handlers (`on`) and children; strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (key === "class") {
      node.className = value;
    } else if (key === "value") {
      node.value = value;
    } else if (key === "checked" || key === "selected" || key === "disabled") {
      node[key] = Boolean(value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let uniqueIds = 0;
const uid = (prefix) => `${prefix}-${++uniqueIds}`;

const TIME_FORMAT = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hourCycle: "h23",
  timeZoneName: "short",
});

/** A <time> showing an API timestamp in the viewer's time zone. */
function when(iso, empty = "—") {
  if (!iso) return empty;
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return h("time", { datetime: iso }, TIME_FORMAT.format(date));
}

/** A datetime-local input's value (the viewer's zone) as an ISO 8601 instant. */
function localToIso(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

/** A Date as a datetime-local input's value, in the viewer's zone. */
function isoToLocal(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`
  );
}

function notify(message) {
  const notice = document.getElementById("notice");
  notice.textContent = message;
}

// -- the API ------------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
  } catch {
    throw new ApiFailure(0, "network", "The webhook service could not be reached. Try again.");
  }
  let data = null;
  if (response.status !== 204) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiFailure(
      response.status,
      error.code || "error",
      error.message || `The request failed (HTTP ${response.status}).`,
      error.field,
    );
    if (response.status === 401) showExpired();
    throw failure;
  }
  return data;
}

/** A query string of the parameters that are set, the account's filter included. */
function query(params) {
  const search = new URLSearchParams();
  if (session.account) search.set("account_id", session.account);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

async function allEndpoints() {
  const found = [];
  let cursor = null;
  do {
    const page = await api("GET", `v1/endpoints${query({ limit: 200, cursor })}`);
    found.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor);
  endpointsById = new Map(found.map((e) => [e.id, e]));
  return found;
}

/** Which optional parts of the API this engine has, from its published document. */
async function detectFeatures() {
  try {
    const response = await fetch("openapi.json", { credentials: "omit", cache: "no-store" });
    const doc = await response.json();
    const paths = doc.paths || {};
    features.catalogue = Boolean(paths["/v1/event-types"]);
    features.testEvents = Boolean(paths["/v1/endpoints/{id}/test"]);
    features.session = Boolean(paths["/v1/session"]);
    features.accepted = Boolean(paths["/v1/accepted-events"]);
  } catch {
    features.catalogue = false;
    features.testEvents = false;
    features.session = false;
    features.accepted = false;
  }
  if (features.session) {
    // A portal token names its account; the operator's shows the one in the link.
    const who = await api("GET", "v1/session");
    if (who.account_id) session.account = null;
    showAccount(who.account_id || session.account, who.expires_at);
  } else {
    showAccount(session.account, null);
  }
  if (features.catalogue) {
    const answer = await api("GET", "v1/event-types");
    const items = Array.isArray(answer) ? answer : answer.data || [];
    // Operational types (endpoint trouble) go to the operator's own account only.
    catalogue = items
      .filter((t) => !t.operational)
      .map((t) => ({ name: t.name, description: t.description || "" }));
  }
}

// -- page frame ---------------------------------------------------------------------------------

function showAccount(account, expiresAt) {
  const place = document.getElementById("account");
  if (!account) return;
  place.replaceChildren();
  append(place, [
    "Account ",
    h("span", { class: "mono" }, account),
    expiresAt ? [" · link valid until ", when(expiresAt)] : null,
  ]);
}

let expired = false;

function showExpired() {
  expired = true;
  document.getElementById("nav").hidden = true;
  notify("");
  main().replaceChildren(
    h("h2", { tabindex: "-1" }, "This link has expired"),
    h(
      "p",
      {},
      "This page was opened with an access link that is no longer valid. " +
        "Open Webhooks again from your MisarMail settings to get a new one.",
    ),
  );
}

/** Replace the page's content with `nodes` and move focus to its heading (for screen readers
 * and keyboards: the new view starts where the focus is). */
function show(section, ...nodes) {
  if (expired) return;
  for (const tab of document.querySelectorAll("#nav .tab")) {
    if (tab.id === `nav-${section}`) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  main().replaceChildren();
  append(main(), nodes);
  const heading = main().querySelector("h2");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
}

function alertBox(message) {
  return h("div", { class: "alert", role: "alert" }, message);
}

async function guarded(section, render) {
  try {
    await render();
  } catch (error) {
    if (expired) return;
    show(section, h("h2", {}, "Something went wrong"), alertBox(error.message));
  }
}

// -- forms --------------------------------------------------------------------------------------

/** A labelled input with a hint and an error line tied to it (aria-describedby). */
function field(labelText, input, hint) {
  const id = input.id || uid("f");
  input.id = id;
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  input.setAttribute("aria-describedby", hint ? `${hintId} ${errorId}` : errorId);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, labelText),
    input,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
    h("p", { class: "field-error", id: errorId }),
  );
}

/** Show an API failure on the form: on the field it names when there is one, else on top. */
function showFormError(form, failure) {
  clearFormErrors(form);
  const control = failure.field ? form.querySelector(`[data-field="${CSS.escape(failure.field)}"]`) : null;
  if (control) {
    control.setAttribute("aria-invalid", "true");
    const errorLine = form.querySelector(`#${control.id}-error`);
    if (errorLine) errorLine.textContent = failure.message;
    control.focus();
  }
  const summary = form.querySelector(".form-alert");
  summary.textContent = failure.message;
}

function clearFormErrors(form) {
  for (const control of form.querySelectorAll("[aria-invalid]")) {
    control.removeAttribute("aria-invalid");
  }
  for (const line of form.querySelectorAll(".field-error")) line.textContent = "";
  const summary = form.querySelector(".form-alert");
  if (summary) summary.textContent = "";
}

function formAlert() {
  return h("div", { class: "alert form-alert", role: "alert" });
}

/** Run `action` on submit with the submit button disabled; API failures land on the form. */
function onSubmit(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const buttons = form.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    try {
      clearFormErrors(form);
      await action();
    } catch (error) {
      if (!expired) showFormError(form, error);
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  });
}

function subscribes(patterns, name) {
  return patterns.some(
    (p) => p === "*" || p === name || (p.endsWith(".*") && name.startsWith(p.slice(0, -1))),
  );
}

/** The event types to subscribe to: the catalogue's, with descriptions, as checkboxes (every
 * type, each `prefix.*` group, or all); a text field when this engine has no catalogue. */
function eventTypePicker(selected) {
  if (!features.catalogue) {
    const input = h("input", {
      type: "text",
      name: "event_types",
      "data-field": "event_types",
      value: (selected || ["*"]).join(", "),
      autocomplete: "off",
    });
    const wrapper = field(
      "Events to send",
      input,
      "Event type names separated by commas, such as email.bounced, email.* or * for all.",
    );
    return { node: wrapper, value: () => input.value.split(/[\s,]+/).filter(Boolean) };
  }
  const chosen = new Set(selected || []);
  const boxes = [];
  const choice = (value, title, description) => {
    const box = h("input", { type: "checkbox", value, id: uid("t"), checked: chosen.has(value) });
    boxes.push(box);
    return h(
      "div",
      { class: "choice" },
      box,
      h(
        "label",
        { for: box.id },
        h("span", { class: "name" }, title),
        description ? [h("br"), h("span", { class: "muted" }, description)] : null,
      ),
    );
  };
  const groups = new Map();
  for (const type of catalogue) {
    const prefix = type.name.includes(".") ? type.name.split(".")[0] : "";
    if (!groups.has(prefix)) groups.set(prefix, []);
    groups.get(prefix).push(type);
  }
  // What the endpoint subscribes to beyond these choices (a type the catalogue hides from this
  // page) stays listed and checked, so that saving keeps it.
  const offered = new Set(["*", ...catalogue.map((t) => t.name)]);
  for (const prefix of groups.keys()) if (prefix) offered.add(`${prefix}.*`);
  const others = [...chosen].filter((name) => !offered.has(name));
  const fieldsetId = uid("types");
  const errorId = `${fieldsetId}-error`;
  const fieldset = h(
    "fieldset",
    { id: fieldsetId, "data-field": "event_types", tabindex: "-1" },
    h("legend", {}, "Events to send"),
    choice("*", "All events (*)", "Every event type, including those added later."),
    [...groups.entries()].map(([prefix, types]) =>
      h(
        "div",
        { class: "group" },
        prefix && types.length > 1
          ? choice(`${prefix}.*`, `All ${prefix} events (${prefix}.*)`, null)
          : null,
        types.map((t) => choice(t.name, t.name, t.description)),
      ),
    ),
    others.length
      ? h("div", { class: "group" }, others.map((name) => choice(name, name, "Subscribed now.")))
      : null,
    h("p", { class: "field-error", id: errorId }),
  );
  fieldset.setAttribute("aria-describedby", errorId);
  return { node: fieldset, value: () => boxes.filter((b) => b.checked).map((b) => b.value) };
}

/** A read-only secret with a copy button. */
function secretBox(secret, label) {
  const input = h("input", {
    type: "text",
    readonly: true,
    value: secret,
    id: uid("secret"),
    "aria-label": label,
    spellcheck: "false",
  });
  const status = h("span", { class: "muted", role: "status" });
  const copy = h(
    "button",
    {
      type: "button",
      on: {
        click: async () => {
          try {
            await navigator.clipboard.writeText(secret);
            status.textContent = "Copied";
          } catch {
            // An iframe without clipboard permission: select it for Ctrl+C / the menu instead.
            input.focus();
            input.select();
            status.textContent = document.execCommand("copy")
              ? "Copied"
              : "Selected: press Ctrl+C to copy";
          }
        },
      },
    },
    "Copy",
  );
  return h("div", { class: "secret" }, input, copy, status);
}

// -- endpoints ----------------------------------------------------------------------------------

function health(endpoint) {
  if (!endpoint.enabled) {
    return {
      badge: h("span", { class: "badge bad" }, "Disabled"),
      text: [
        "Disabled ",
        when(endpoint.disabled_at),
        ": ",
        endpoint.disabled_reason || "no reason was given",
      ],
    };
  }
  if (endpoint.failing_since) {
    return {
      badge: h("span", { class: "badge warn" }, "Failing"),
      text: ["Failing since ", when(endpoint.failing_since)],
    };
  }
  if (endpoint.last_success_at) {
    return {
      badge: h("span", { class: "badge ok" }, "Healthy"),
      text: ["Last success ", when(endpoint.last_success_at)],
    };
  }
  return { badge: h("span", { class: "badge" }, "No deliveries yet"), text: null };
}

async function endpointsView() {
  main().replaceChildren(h("p", { class: "muted" }, "Loading endpoints…"));
  const endpoints = await allEndpoints();
  const add = h(
    "button",
    { type: "button", class: "primary", on: { click: () => endpointForm(null) } },
    "Add endpoint",
  );
  const list =
    endpoints.length === 0
      ? h(
          "div",
          { class: "panel" },
          h("p", {}, "No endpoints yet."),
          h(
            "p",
            { class: "muted" },
            "Add an endpoint: a URL on your server that receives an HTTPS POST, signed by us, " +
              "whenever one of the events you choose happens.",
          ),
        )
      : h(
          "ul",
          { class: "cards", "aria-label": "Endpoints" },
          endpoints.map((e) => {
            const state = health(e);
            return h(
              "li",
              { class: "card", "data-endpoint": e.id },
              h(
                "div",
                { class: "head" },
                h(
                  "button",
                  {
                    type: "button",
                    class: "link url wrap",
                    on: { click: () => guarded("endpoints", () => endpointView(e.id)) },
                  },
                  e.url,
                ),
                state.badge,
              ),
              e.description ? h("p", { class: "wrap description" }, e.description) : null,
              h("p", { class: "muted wrap" }, "Events: ", e.event_types.join(", ")),
              state.text ? h("p", { class: "muted health" }, state.text) : null,
            );
          }),
        );
  show("endpoints", h("h2", {}, "Endpoints"), h("div", { class: "actions" }, add), list);
}

/** Add (endpoint null) or edit an endpoint. */
function endpointForm(endpoint) {
  const url = h("input", {
    type: "url",
    name: "url",
    "data-field": "url",
    value: endpoint ? endpoint.url : "",
    placeholder: "https://example.com/webhooks/misarmail",
    autocomplete: "off",
    required: true,
  });
  const description = h("input", {
    type: "text",
    name: "description",
    "data-field": "description",
    value: endpoint ? endpoint.description : "",
    maxlength: "1000",
    autocomplete: "off",
  });
  const picker = eventTypePicker(endpoint ? endpoint.event_types : ["*"]);
  const form = h(
    "form",
    { novalidate: true, "aria-label": endpoint ? "Edit endpoint" : "Add endpoint" },
    formAlert(),
    field("Endpoint URL", url, "Where we POST the events: an HTTPS URL on your server."),
    field("Description", description, "Optional: what this endpoint is for."),
    picker.node,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, endpoint ? "Save changes" : "Add endpoint"),
      h(
        "button",
        {
          type: "button",
          on: {
            click: () =>
              guarded("endpoints", () => (endpoint ? endpointView(endpoint.id) : endpointsView())),
          },
        },
        "Cancel",
      ),
    ),
  );
  onSubmit(form, async () => {
    const body = {
      url: url.value.trim(),
      description: description.value,
      event_types: picker.value(),
    };
    if (endpoint) {
      await api("PATCH", `v1/endpoints/${endpoint.id}`, body);
      notify("Endpoint saved.");
      await endpointView(endpoint.id);
    } else {
      if (session.account) body.account_id = session.account;
      const created = await api("POST", "v1/endpoints", body);
      notify("Endpoint added.");
      await endpointView(created.id, created.secret);
    }
  });
  show("endpoints", h("h2", {}, endpoint ? "Edit endpoint" : "Add an endpoint"), form);
  url.focus();
}

async function endpointView(id, newSecret) {
  const endpoint = await api("GET", `v1/endpoints/${encodeURIComponent(id)}`);
  endpointsById.set(endpoint.id, endpoint);
  const state = health(endpoint);
  const back = h(
    "button",
    { type: "button", class: "link", on: { click: () => guarded("endpoints", endpointsView) } },
    "← All endpoints",
  );
  const facts = h(
    "dl",
    { class: "facts" },
    h("dt", {}, "URL"),
    h("dd", { class: "mono endpoint-url" }, endpoint.url),
    h("dt", {}, "Description"),
    h("dd", { class: "description" }, endpoint.description || "—"),
    h("dt", {}, "Events"),
    h("dd", { class: "event-types" }, endpoint.event_types.join(", ")),
    h("dt", {}, "Status"),
    h("dd", { class: "health" }, state.badge, state.text ? [" ", state.text] : null),
    h("dt", {}, "Last success"),
    h("dd", {}, when(endpoint.last_success_at, "never")),
    h("dt", {}, "Created"),
    h("dd", {}, when(endpoint.created_at)),
  );
  const sections = [
    h("p", {}, back),
    h("h2", { class: "wrap" }, endpoint.description || endpoint.url),
  ];
  if (newSecret) {
    sections.push(
      h(
        "section",
        { class: "panel attention", "aria-labelledby": "new-secret-title" },
        h("h3", { id: "new-secret-title" }, "Your signing secret"),
        h(
          "p",
          {},
          "Copy this secret into your server's configuration now and use it to verify the " +
            "X-MisarMail-Signature of each request. You can reveal it again on this page.",
        ),
        secretBox(newSecret, "New signing secret"),
      ),
    );
  }
  sections.push(facts, endpointActions(endpoint));
  sections.push(secretSection(endpoint));
  if (features.testEvents) sections.push(testEventSection(endpoint));
  sections.push(recoverSection(endpoint));
  sections.push(
    h(
      "p",
      {},
      h(
        "button",
        {
          type: "button",
          class: "link",
          on: { click: () => guarded("deliveries", () => deliveriesView({ endpoint_id: id })) },
        },
        "See this endpoint's deliveries",
      ),
    ),
  );
  show("endpoints", sections);
}

function endpointActions(endpoint) {
  const box = h("div", { class: "actions" });
  const reload = (message) => async () => {
    notify(message);
    await endpointView(endpoint.id);
  };
  const run = (action, message) => async () => {
    try {
      await action();
      await reload(message)();
    } catch (error) {
      if (!expired) box.after(alertBox(error.message));
    }
  };
  box.append(
    h(
      "button",
      { type: "button", on: { click: () => endpointForm(endpoint) } },
      "Edit",
    ),
  );
  if (endpoint.enabled) {
    box.append(
      h(
        "button",
        { type: "button", on: { click: () => disableForm(endpoint, box) } },
        "Disable",
      ),
    );
  } else {
    box.append(
      h(
        "button",
        {
          type: "button",
          on: {
            click: run(
              () => api("POST", `v1/endpoints/${endpoint.id}/enable`, {}),
              "Endpoint enabled: what the disable cancelled is queued again.",
            ),
          },
        },
        "Enable",
      ),
    );
  }
  box.append(
    h(
      "button",
      { type: "button", class: "danger", on: { click: () => deleteConfirm(endpoint, box) } },
      "Delete",
    ),
  );
  return box;
}

function disableForm(endpoint, actions) {
  const reason = h("input", {
    type: "text",
    "data-field": "reason",
    maxlength: "1000",
    autocomplete: "off",
  });
  const form = h(
    "form",
    { class: "panel", novalidate: true, "aria-label": "Disable endpoint" },
    formAlert(),
    field("Reason (optional)", reason, "Deliveries waiting for this endpoint are cancelled."),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "danger" }, "Disable endpoint"),
      h("button", { type: "button", on: { click: () => form.remove() } }, "Cancel"),
    ),
  );
  onSubmit(form, async () => {
    const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
    await api("POST", `v1/endpoints/${endpoint.id}/disable`, body);
    notify("Endpoint disabled.");
    await endpointView(endpoint.id);
  });
  actions.after(form);
  reason.focus();
}

function deleteConfirm(endpoint, actions) {
  const form = h(
    "form",
    { class: "panel", novalidate: true, "aria-label": "Delete endpoint" },
    formAlert(),
    h(
      "p",
      {},
      "Delete this endpoint? Deliveries waiting for it are cancelled and it receives nothing " +
        "more. This cannot be undone.",
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "danger" }, "Delete endpoint"),
      h("button", { type: "button", on: { click: () => form.remove() } }, "Keep it"),
    ),
  );
  onSubmit(form, async () => {
    await api("DELETE", `v1/endpoints/${endpoint.id}`);
    notify("Endpoint deleted.");
    await endpointsView();
  });
  actions.after(form);
  form.querySelector("button").focus();
}

function secretSection(endpoint) {
  const shown = h("div", { class: "secret-shown" });
  const reveal = h(
    "button",
    {
      type: "button",
      on: {
        click: async () => {
          try {
            const full = await api(
              "GET",
              `v1/endpoints/${endpoint.id}?reveal_secret=true`,
            );
            shown.replaceChildren(secretBox(full.secret, "Signing secret"));
            reveal.hidden = true;
          } catch (error) {
            if (!expired) shown.replaceChildren(alertBox(error.message));
          }
        },
      },
    },
    "Reveal secret",
  );
  const grace = h(
    "select",
    { "data-field": "grace_seconds" },
    GRACE_CHOICES.map(([seconds, text]) =>
      h("option", { value: String(seconds), selected: seconds === DEFAULT_GRACE_S }, text),
    ),
  );
  const rotated = h("div");
  const rotate = h(
    "form",
    { novalidate: true, "aria-label": "Rotate secret" },
    formAlert(),
    field(
      "When rotating",
      grace,
      "During the grace period each request carries a signature with the old and the new secret.",
    ),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Rotate secret")),
    rotated,
  );
  onSubmit(rotate, async () => {
    const answer = await api("POST", `v1/endpoints/${endpoint.id}/rotate-secret`, {
      grace_seconds: Number(grace.value),
    });
    rotated.replaceChildren(
      h(
        "div",
        { class: "panel attention" },
        h("p", {}, "New secret: copy it now. You can reveal it again later."),
        secretBox(answer.secret, "New signing secret"),
        h(
          "p",
          { class: "muted" },
          answer.previous_secret_expires_at
            ? ["The previous secret keeps signing until ", when(answer.previous_secret_expires_at), "."]
            : "The previous secret no longer signs.",
        ),
      ),
    );
    notify("Secret rotated.");
  });
  return h(
    "section",
    { class: "box", "aria-labelledby": "secret-title" },
    h("h3", { id: "secret-title" }, "Signing secret"),
    h(
      "p",
      { class: "mono" },
      endpoint.secret,
      endpoint.previous_secret_expires_at
        ? h(
            "span",
            { class: "muted" },
            " (the previous secret signs too until ",
            when(endpoint.previous_secret_expires_at),
            ")",
          )
        : null,
    ),
    h("div", { class: "actions" }, reveal),
    shown,
    rotate,
  );
}

function testEventSection(endpoint) {
  // The types it subscribes to come first; any catalogue type may be sent as a test.
  const names = features.catalogue ? catalogue.map((t) => t.name) : [];
  const subscribed = names.filter((name) => subscribes(endpoint.event_types, name));
  const types = [...subscribed, ...names.filter((name) => !subscribed.includes(name))];
  const type = h(
    "select",
    { "data-field": "event_type" },
    types.map((name) => h("option", { value: name }, name)),
  );
  const result = h("div");
  const form = h(
    "form",
    { novalidate: true, "aria-label": "Send a test event" },
    formAlert(),
    field("Event type", type, "Sends the catalogue's example of this event, marked as a test."),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", disabled: types.length === 0 }, "Send test event"),
    ),
    result,
  );
  onSubmit(form, async () => {
    const answer = await api("POST", `v1/endpoints/${endpoint.id}/test`, {
      event_type: type.value,
    });
    notify(`Test event sent as delivery ${answer.delivery_id}.`);
    result.replaceChildren(
      h(
        "p",
        {},
        `Sent as delivery ${answer.delivery_id}. `,
        h(
          "button",
          {
            type: "button",
            class: "link",
            on: { click: () => guarded("deliveries", () => deliveryView(answer.delivery_id)) },
          },
          "View it",
        ),
      ),
    );
  });
  return h(
    "section",
    { class: "box", "aria-labelledby": "test-title" },
    h("h3", { id: "test-title" }, "Test events"),
    form,
  );
}

function recoverSection(endpoint) {
  const since = h("input", {
    type: "datetime-local",
    "data-field": "since",
    value: isoToLocal(new Date(Date.now() - 24 * 3600 * 1000)),
  });
  const form = h(
    "form",
    { novalidate: true, "aria-label": "Recover failed deliveries" },
    formAlert(),
    field("Failed since", since, "In your time zone. Failed and cancelled deliveries since then are sent again."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Recover failed deliveries")),
  );
  onSubmit(form, async () => {
    const iso = localToIso(since.value);
    if (!iso) throw new ApiFailure(400, "invalid_field", "since: choose a date and time", "since");
    const answer = await api("POST", `v1/endpoints/${endpoint.id}/recover`, { since: iso });
    const n = answer.count;
    notify(n === 1 ? "1 delivery is being sent again." : `${n} deliveries are being sent again.`);
  });
  return h(
    "section",
    { class: "box", "aria-labelledby": "recover-title" },
    h("h3", { id: "recover-title" }, "Recover failed deliveries"),
    form,
  );
}

// -- the delivery log ---------------------------------------------------------------------------

/** The log, newest first: `filters` (status, event_type, endpoint_id, since as ISO) and the
 * cursors of the pages seen so far, so that "Newer" goes back one page. */
async function deliveriesView(filters = {}, cursors = [null]) {
  if (endpointsById.size === 0) await allEndpoints();
  const cursor = cursors[cursors.length - 1];
  const page = await api(
    "GET",
    `v1/deliveries${query({ ...filters, limit: PAGE_SIZE, cursor })}`,
  );
  // Events accepted but not yet turned into deliveries (the delivery service is catching up, or
  // is down): said on the first page, where they will appear.
  const accepted =
    features.accepted && cursors.length === 1 ? await api("GET", `v1/accepted-events${query({})}`) : null;
  const form = filterForm(filters);
  const rows = page.data.map((d) =>
    h(
      "tr",
      { "data-delivery": d.delivery_id },
      h("td", { "data-label": "Created" }, when(d.created_at)),
      h("td", { "data-label": "Event" }, d.event_type, d.test ? [" ", testBadge()] : null),
      h("td", { "data-label": "Endpoint", class: "wrap" }, endpointName(d.endpoint_id, d.endpoint_url)),
      h(
        "td",
        { "data-label": "Status" },
        h("span", { class: `badge ${statusClass(d.status)}` }, STATUS_WORDS[d.status] || d.status),
      ),
      h("td", { "data-label": "Attempts" }, String(d.attempts)),
      h("td", { "data-label": "Last response" }, responseWord(d.last_status_code)),
      h(
        "td",
        { "data-label": "Delivery" },
        h(
          "button",
          {
            type: "button",
            class: "link",
            "aria-label": `Delivery ${d.delivery_id} details`,
            on: { click: () => guarded("deliveries", () => deliveryView(d.delivery_id, filters, cursors)) },
          },
          `#${d.delivery_id}`,
        ),
      ),
    ),
  );
  const filtered = Object.values(filters).some(Boolean);
  const table =
    rows.length === 0
      ? h(
          "div",
          { class: "panel empty" },
          cursors.length > 1
            ? "No more deliveries."
            : filtered
              ? "No deliveries match these filters."
              : "No deliveries yet. They appear here as soon as an event is sent to one of your endpoints.",
        )
      : h(
          "table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Created", "Event", "Endpoint", "Status", "Attempts", "Last response", "Delivery"].map(
                (t) => h("th", { scope: "col" }, t),
              ),
            ),
          ),
          h("tbody", {}, rows),
        );
  const pager = h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    h(
      "button",
      {
        type: "button",
        disabled: cursors.length === 1,
        on: { click: () => guarded("deliveries", () => deliveriesView(filters, cursors.slice(0, -1))) },
      },
      "← Newer",
    ),
    h("span", { class: "muted" }, `Page ${cursors.length}`),
    h(
      "button",
      {
        type: "button",
        disabled: !page.next_cursor,
        on: {
          click: () =>
            guarded("deliveries", () => deliveriesView(filters, [...cursors, page.next_cursor])),
        },
      },
      "Older →",
    ),
  );
  show("deliveries", h("h2", {}, "Delivery log"), acceptedNote(accepted), form, table, pager);
}

function acceptedNote(accepted) {
  if (!accepted || !accepted.events) return null;
  const n = accepted.events;
  return h(
    "div",
    { class: "panel attention", role: "status", id: "accepted-events" },
    n === 1 ? "1 event was accepted and is waiting to be sent" : `${n} events were accepted and are waiting to be sent`,
    accepted.oldest_accepted_at ? [", the oldest since ", when(accepted.oldest_accepted_at)] : null,
    ". Nothing is lost: they appear below once they are on their way to your endpoints.",
  );
}

function endpointName(id, url) {
  const endpoint = endpointsById.get(id);
  if (!endpoint || !endpoint.description) return url;
  return [endpoint.description, h("br"), h("span", { class: "muted small" }, url)];
}

function testBadge() {
  return h("span", { class: "badge test" }, "Test");
}

function statusClass(status) {
  if (status === "delivered") return "ok";
  if (status === "failed" || status === "cancelled") return "bad";
  if (status === "retrying") return "warn";
  return "";
}

function responseWord(code) {
  if (code === null || code === undefined) return "—";
  return code === 0 ? "no response" : `HTTP ${code}`;
}

function filterForm(filters) {
  const status = h(
    "select",
    { "data-field": "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: filters.status === s }, STATUS_WORDS[s])),
  );
  const eventType = features.catalogue
    ? h(
        "select",
        { "data-field": "event_type" },
        h("option", { value: "" }, "Any event"),
        catalogue.map((t) => h("option", { value: t.name, selected: filters.event_type === t.name }, t.name)),
      )
    : h("input", {
        type: "text",
        "data-field": "event_type",
        value: filters.event_type || "",
        placeholder: "e.g. email.bounced",
        autocomplete: "off",
      });
  const endpoint = h(
    "select",
    { "data-field": "endpoint_id" },
    h("option", { value: "" }, "Any endpoint"),
    [...endpointsById.values()].map((e) =>
      h("option", { value: e.id, selected: filters.endpoint_id === e.id }, e.description || e.url),
    ),
  );
  const since = h("input", {
    type: "datetime-local",
    "data-field": "since",
    value: filters.since ? isoToLocal(new Date(filters.since)) : "",
  });
  const form = h(
    "form",
    { novalidate: true, "aria-label": "Filter deliveries" },
    formAlert(),
    h(
      "div",
      { class: "filters" },
      field("Status", status),
      field("Event type", eventType),
      field("Endpoint", endpoint),
      field("Since (your time)", since),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit", class: "primary" }, "Apply filters"),
        h(
          "button",
          { type: "button", on: { click: () => guarded("deliveries", () => deliveriesView()) } },
          "Clear",
        ),
      ),
    ),
  );
  onSubmit(form, async () => {
    const next = {
      status: status.value,
      event_type: eventType.value.trim(),
      endpoint_id: endpoint.value,
      since: since.value ? localToIso(since.value) : "",
    };
    await deliveriesView(next);
  });
  return form;
}

async function deliveryView(id, filters, cursors) {
  const detail = await api("GET", `v1/deliveries/${encodeURIComponent(id)}`);
  const d = detail.delivery;
  const back = h(
    "button",
    {
      type: "button",
      class: "link",
      on: { click: () => guarded("deliveries", () => deliveriesView(filters || {}, cursors || [null])) },
    },
    "← Delivery log",
  );
  const result = h("div");
  const redeliver = h(
    "button",
    {
      type: "button",
      on: {
        click: async () => {
          redeliver.disabled = true;
          try {
            const answer = await api("POST", `v1/deliveries/${d.delivery_id}/redeliver`, {});
            notify(`Sent again as delivery ${answer.delivery_id}.`);
            result.replaceChildren(
              h(
                "p",
                {},
                `Sent again as delivery ${answer.delivery_id}. `,
                h(
                  "button",
                  {
                    type: "button",
                    class: "link",
                    on: { click: () => guarded("deliveries", () => deliveryView(answer.delivery_id)) },
                  },
                  "View it",
                ),
              ),
            );
          } catch (error) {
            if (!expired) result.replaceChildren(alertBox(error.message));
          } finally {
            redeliver.disabled = false;
          }
        },
      },
    },
    "Redeliver",
  );
  const facts = h(
    "dl",
    { class: "facts" },
    h("dt", {}, "Status"),
    h("dd", {}, h("span", { class: `badge ${statusClass(d.status)}` }, STATUS_WORDS[d.status] || d.status)),
    h("dt", {}, "Event"),
    h("dd", {}, `${d.event_type} (event ${d.event_id})`, d.test ? [" ", testBadge()] : null),
    h("dt", {}, "Endpoint"),
    h("dd", { class: "wrap" }, endpointName(d.endpoint_id, d.endpoint_url)),
    h("dt", {}, "Attempts"),
    h("dd", {}, String(d.attempts)),
    h("dt", {}, "Created"),
    h("dd", {}, when(d.created_at)),
    h("dt", {}, "Next attempt"),
    h("dd", {}, when(d.next_attempt_at)),
    h("dt", {}, "Ended"),
    h("dd", {}, when(d.ended_at)),
  );
  const attempts =
    detail.attempts.length === 0
      ? h("p", { class: "muted" }, "No attempt yet.")
      : h(
          "ol",
          { class: "cards attempts", "aria-label": "Attempts" },
          detail.attempts.map((a) =>
            h(
              "li",
              { class: "attempt", "data-attempt": a.attempt },
              h(
                "div",
                { class: "head" },
                h("strong", {}, `Attempt ${a.attempt}`),
                when(a.started_at),
                h("span", { class: "status-code" }, a.status_code === 0 ? "No response" : `HTTP ${a.status_code}`),
                h("span", { class: "latency" }, `${a.duration_ms} ms`),
                h("span", { class: `badge ${a.outcome === "delivered" ? "ok" : a.outcome === "failed" ? "bad" : "warn"}` }, a.outcome),
              ),
              a.error_kind || a.error_message
                ? h("p", { class: "error wrap" }, "Error: ", [a.error_kind, a.error_message].filter(Boolean).join(": "))
                : null,
              a.next_attempt_at ? h("p", { class: "muted" }, "Retry scheduled for ", when(a.next_attempt_at)) : null,
              a.response_excerpt
                ? [h("p", { class: "muted" }, "Response body (start):"), h("pre", { class: "response" }, a.response_excerpt)]
                : null,
            ),
          ),
        );
  show(
    "deliveries",
    h("p", {}, back),
    h("h2", {}, `Delivery ${d.delivery_id}`),
    facts,
    h("div", { class: "actions" }, redeliver),
    result,
    h("h3", {}, "Attempts"),
    attempts,
    h("h3", {}, "Payload"),
    detail.payload === null
      ? h("p", { class: "muted" }, "The payload has passed its retention period.")
      : h("pre", { class: "payload" }, JSON.stringify(detail.payload, null, 2)),
  );
}

// -- start --------------------------------------------------------------------------------------

async function start() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  session.token = params.get("token");
  session.account = params.get("account");
  // Out of the address bar (and so out of bookmarks, history and shared screenshots).
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  if (!session.token) {
    main().replaceChildren(
      h("h2", {}, "No access link"),
      h("p", {}, "Open Webhooks from your MisarMail settings: this page needs the link it gives."),
    );
    return;
  }
  try {
    await detectFeatures();
  } catch (error) {
    if (!expired) main().replaceChildren(h("h2", {}, "Something went wrong"), alertBox(error.message));
    return;
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-endpoints").addEventListener("click", () => {
    notify("");
    guarded("endpoints", endpointsView);
  });
  document.getElementById("nav-deliveries").addEventListener("click", () => {
    notify("");
    guarded("deliveries", () => deliveriesView());
  });
  await guarded("endpoints", endpointsView);
}

start();

-- Initial schema of misarmail-webhooks. Append-only: never edit after merge; add 0002_... instead.
-- Functions live in sql/functions/ and are (re)applied after the migrations.

CREATE SCHEMA IF NOT EXISTS webhooks;

-- One row of policy that SQL and the engine must agree on (DESIGN §8). Change it with plain UPDATE;
-- a trigger (functions/settings_changed.sql) tells a running engine to reload it.
CREATE TABLE webhooks.settings (
    singleton             boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    allow_http            boolean    NOT NULL DEFAULT false,
    allow_private_networks boolean   NOT NULL DEFAULT false,
    retry_schedule        interval[] NOT NULL
        DEFAULT '{4 minutes,16 minutes,64 minutes,256 minutes,1024 minutes}'
        CHECK (cardinality(retry_schedule) BETWEEN 0 AND 20
               AND array_position(retry_schedule, NULL) IS NULL),
    retry_jitter          double precision NOT NULL DEFAULT 0.1
        CHECK (retry_jitter >= 0 AND retry_jitter < 1),
    max_payload_bytes     integer    NOT NULL DEFAULT 262144 CHECK (max_payload_bytes > 0),
    retention             interval   NOT NULL DEFAULT '30 days' CHECK (retention >= '1 day'),
    disable_after         interval   NOT NULL DEFAULT '5 days' CHECK (disable_after > '0'),
    lease_duration        interval   NOT NULL DEFAULT '2 minutes' CHECK (lease_duration >= '1 second'),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
INSERT INTO webhooks.settings DEFAULT VALUES;

-- Unlogged on purpose: it only says whether the engine is asleep and wants a NOTIFY (DESIGN §3).
-- Losing it in a crash is harmless: the engine rewrites it and also polls.
CREATE UNLOGGED TABLE webhooks.engine_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    waiting    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO webhooks.engine_state DEFAULT VALUES;

-- The event type catalogue. Subscribing to or emitting a type not listed here is an error.
CREATE TABLE webhooks.event_types (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z_]+\.[a-z_]+$'),
    description text NOT NULL
);
INSERT INTO webhooks.event_types (name, description) VALUES
    ('email.sent',           'An email was handed to the receiving mail server.'),
    ('email.opened',         'A recipient opened an email.'),
    ('email.clicked',        'A recipient clicked a tracked link.'),
    ('email.bounced',        'An email bounced; data.bounce_type is "hard" or "soft".'),
    ('email.unsubscribed',   'A recipient unsubscribed.'),
    ('email.spam_complaint', 'A recipient reported an email as spam.'),
    ('automation.triggered', 'An automation was triggered for a contact.'),
    ('contact.created',      'A contact was created.'),
    ('contact.updated',      'A contact was updated.');

CREATE TABLE webhooks.endpoints (
    id                         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id                 text NOT NULL CHECK (account_id <> ''),
    url                        text NOT NULL,
    description                text NOT NULL DEFAULT '',
    event_types                text[] NOT NULL,
    secret                     text NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    enabled                    boolean NOT NULL DEFAULT true,
    disabled_at                timestamptz,
    disabled_reason            text,
    deleted_at                 timestamptz,
    max_in_flight              integer NOT NULL DEFAULT 8 CHECK (max_in_flight BETWEEN 1 AND 256),
    ordering                   text NOT NULL DEFAULT 'dispatch' CHECK (ordering IN ('dispatch', 'strict')),
    rate_limit_per_s           double precision CHECK (rate_limit_per_s > 0),
    last_success_at            timestamptz,
    failing_since              timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);
-- emit's subscriber lookup: one probe of this index per app transaction.
CREATE INDEX endpoints_enabled_account_idx ON webhooks.endpoints (account_id) WHERE enabled;
CREATE INDEX endpoints_account_idx ON webhooks.endpoints (account_id, created_at) WHERE deleted_at IS NULL;

-- Events are written in the app's transaction. Partitioned by day; retention drops partitions.
CREATE TABLE webhooks.events (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    account_id      text NOT NULL,
    type            text NOT NULL,
    payload         jsonb NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
-- The default partition only catches rows whose day partition was not created in time, so that an
-- app transaction never fails for lack of a partition.
CREATE TABLE webhooks.events_default PARTITION OF webhooks.events DEFAULT;

-- Idempotency keys need uniqueness across partitions, which a partitioned table cannot enforce.
CREATE TABLE webhooks.idempotency_keys (
    account_id text NOT NULL,
    key        text NOT NULL,
    event_id   bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);

-- The hot table: live deliveries only (pending, in flight, waiting for a retry). An ended delivery is
-- deleted here and appended to delivery_outcomes, so claims stay fast and vacuum cheap.
-- due_at doubles as the lease expiry: a claim moves it forward, so leased rows are simply not due.
CREATE TABLE webhooks.deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         bigint NOT NULL,
    event_created_at timestamptz NOT NULL,
    event_type       text NOT NULL,
    endpoint_id      uuid NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    due_at           timestamptz NOT NULL DEFAULT now(),
    lease_token      uuid,
    last_status      integer,
    last_error       text,
    last_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_endpoint_due_idx ON webhooks.deliveries (endpoint_id, due_at, id);
CREATE INDEX deliveries_due_idx ON webhooks.deliveries (due_at);
-- strict ordering looks at the endpoint's oldest live delivery.
CREATE INDEX deliveries_endpoint_id_idx ON webhooks.deliveries (endpoint_id, id);

-- One row per HTTP attempt, transport failures included (status 0).
CREATE TABLE webhooks.attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    delivery_id      bigint NOT NULL,
    endpoint_id      uuid NOT NULL,
    event_id         bigint NOT NULL,
    attempt          integer NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    status_code      integer NOT NULL,
    error_kind       text,
    error_message    text,
    response_excerpt text,
    outcome          text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed', 'stale')),
    next_attempt_at  timestamptz,
    PRIMARY KEY (id, started_at)
) PARTITION BY RANGE (started_at);
CREATE TABLE webhooks.attempts_default PARTITION OF webhooks.attempts DEFAULT;
CREATE INDEX attempts_delivery_idx ON webhooks.attempts (delivery_id);
CREATE INDEX attempts_endpoint_started_idx ON webhooks.attempts (endpoint_id, started_at);

-- The final state of each ended delivery.
CREATE TABLE webhooks.delivery_outcomes (
    delivery_id      bigint NOT NULL,
    event_id         bigint NOT NULL,
    event_created_at timestamptz NOT NULL,
    event_type       text NOT NULL,
    endpoint_id      uuid NOT NULL,
    status           text NOT NULL CHECK (status IN ('delivered', 'failed', 'cancelled')),
    attempts         integer NOT NULL,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL,
    ended_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, ended_at)
) PARTITION BY RANGE (ended_at);
CREATE TABLE webhooks.delivery_outcomes_default PARTITION OF webhooks.delivery_outcomes DEFAULT;
CREATE INDEX delivery_outcomes_endpoint_idx ON webhooks.delivery_outcomes (endpoint_id, ended_at);
CREATE INDEX delivery_outcomes_event_idx ON webhooks.delivery_outcomes (event_id);

-- Erasure of a recipient's address (functions/75_erasure.sql) and per-account retention
-- (functions/70_maintenance.sql). Two new tables; nothing existing is locked or rewritten, so this
-- applies beside a running engine and the app's emits without waiting for either.

-- One row per erasure: that it happened, for which account, when, and how many rows it changed.
-- Never the address, nor a hash of it: an address is guessable, so its hash identifies the person
-- as well as the address does (hash the account's contact list and compare), and keeping it would
-- keep what was erased. Rows hold no recipient data, so no retention removes them.
CREATE TABLE webhooks.erasures (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       text NOT NULL,
    erased_at        timestamptz NOT NULL DEFAULT now(),
    events           bigint NOT NULL,
    deliveries       bigint NOT NULL,
    attempts         bigint NOT NULL,
    outcomes         bigint NOT NULL,
    idempotency_keys bigint NOT NULL
);
CREATE INDEX erasures_account_idx ON webhooks.erasures (account_id, erased_at);

-- Accounts that keep their delivery history for less than settings.retention. The shorter of the
-- two applies; the maintenance task deletes such an account's older rows in bounded batches.
CREATE TABLE webhooks.account_retention (
    account_id text PRIMARY KEY CHECK (account_id <> ''),
    retention  interval NOT NULL CHECK (retention > '0'),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Withdrawal webhooks: subscriptions, a transactional outbox written with the entries it
-- announces, and every delivery attempt.

CREATE TABLE webhook_subscriptions (
    id                    uuid        PRIMARY KEY,
    url                   text        NOT NULL,
    events                text[]      NOT NULL,
    purposes              text[],     -- NULL: every purpose
    description           text,
    secret                text        NOT NULL,
    previous_secret       text,       -- still signs until previous_secret_until (rotation)
    previous_secret_until timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    failing_since         timestamptz,
    disabled_at           timestamptz,
    disabled_reason       text,
    deleted_at            timestamptz
);

CREATE TABLE webhook_deliveries (
    id              text        PRIMARY KEY,  -- the webhook-id, stable across retries
    -- Rows are only inserted under the log lock, so this is log order: a batch's consent events
    -- by index, then its checkpoint. A subscription's deliveries go out in this order.
    seq             bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    subscription_id uuid        NOT NULL REFERENCES webhook_subscriptions (id),
    idx             bigint      NOT NULL,     -- the entry's index (a checkpoint event: its last entry)
    event_type      text        NOT NULL,
    payload         bytea       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (subscription_id, seq) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_subscription ON webhook_deliveries (subscription_id, created_at);

CREATE TABLE webhook_attempts (
    delivery_id text             NOT NULL REFERENCES webhook_deliveries (id),
    attempt     integer          NOT NULL,
    started_at  timestamptz      NOT NULL,
    status_code integer,
    latency_ms  double precision NOT NULL,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);

-- How many entries each (subject, purpose) has: the webhook `sequence`, so a receiver can drop a
-- late retry of an older event.
ALTER TABLE consent_state ADD COLUMN entries bigint NOT NULL DEFAULT 0;
UPDATE consent_state s SET entries = (
    SELECT count(*) FROM log_entries l WHERE l.subject = s.subject AND l.purpose = s.purpose
);

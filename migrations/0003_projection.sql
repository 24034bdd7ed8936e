-- The current state of every (subject, purpose): the deciding entry, written in the same
-- transaction as the append. Times are log timestamps (fixed width, UTC), which compare as the
-- instants they name, exactly as the pure decision rules compare them.
CREATE TABLE consent_state (
    subject        text    NOT NULL,
    purpose        text    NOT NULL,
    idx            bigint  NOT NULL,
    action         text    NOT NULL,
    policy_version integer NOT NULL,
    occurred_at    text    NOT NULL,
    expires_at     text,
    PRIMARY KEY (subject, purpose)
);

-- Idempotency-Key per token: a retry with the same key and body gets the first receipt back,
-- rebuilt from the log (the entry at idx, in the tree of tree_size its batch signed).
CREATE TABLE idempotency_keys (
    token_name   text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    idx          bigint      NOT NULL,
    tree_size    bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_name, key)
);

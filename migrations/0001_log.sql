-- The consent log: entries with their exact bytes, the stored perfect nodes of the Merkle tree,
-- the signed checkpoints and every key that ever signed one. Rows are only ever inserted.

CREATE TABLE log_entries (
    idx         bigint      PRIMARY KEY CHECK (idx >= 0),
    entry       bytea       NOT NULL,
    subject     text        NOT NULL,
    purpose     text        NOT NULL,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX log_entries_by_subject ON log_entries (subject, purpose, idx);

-- Node (level, idx) covers leaves [idx * 2^level, (idx + 1) * 2^level); level 0 holds the leaf
-- hashes. Only perfect subtrees are stored, each once, when its last leaf arrives.
CREATE TABLE merkle_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE signing_keys (
    key_id     text        PRIMARY KEY,
    key_name   text        NOT NULL,
    vkey       text        NOT NULL UNIQUE,
    first_used timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE checkpoints (
    tree_size   bigint      PRIMARY KEY CHECK (tree_size >= 0),
    root        bytea       NOT NULL CHECK (length(root) = 32),
    note        text        NOT NULL,
    key_id      text        NOT NULL REFERENCES signing_keys (key_id),
    recorded_at timestamptz NOT NULL
);

-- The device's pseudonym and its salt. Not part of the log: erasure deletes the row, which
-- leaves the log verifiable but no longer linkable to the device.
CREATE TABLE subjects (
    device_id  text        PRIMARY KEY,
    subject    text        NOT NULL UNIQUE,
    salt       bytea       NOT NULL CHECK (length(salt) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent ledger: % on % is refused, the log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['log_entries', 'merkle_nodes', 'checkpoints', 'signing_keys'] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I
                        FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()', t || '_append_only', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()', t || '_no_truncate', t);
        -- Privileges too, so a role that is not a superuser cannot even try. The owner could
        -- grant them back, but only by a deliberate act that leaves its own trace.
        EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %I FROM PUBLIC, CURRENT_USER', t);
    END LOOP;
END
$$;

-- Which key signed which checkpoints, found without reading them all: at start a server checks
-- that every key that ever signed a checkpoint is one it trusts, and /v1/keys lists the log keys
-- that signed (webhook keys are in signing_keys too but never sign a checkpoint).
CREATE INDEX checkpoints_by_key ON checkpoints (key_id, tree_size);

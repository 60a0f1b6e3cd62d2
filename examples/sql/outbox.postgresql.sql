CREATE TABLE safesync_outbox (
    id BIGSERIAL NOT NULL,
    stream VARCHAR(190) NOT NULL,
    fields BYTEA NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    sent_at TIMESTAMP WITHOUT TIME ZONE,
    entry_id VARCHAR(64),
    PRIMARY KEY (id)
);
CREATE INDEX ix_safesync_outbox_unsent ON safesync_outbox (sent_at, id);

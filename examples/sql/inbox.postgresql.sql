CREATE TABLE safesync_inbox (
    stream BYTEA NOT NULL,
    consumer_group BYTEA NOT NULL,
    message_key BYTEA NOT NULL,
    message_id VARCHAR(64) NOT NULL,
    processed_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (stream, consumer_group, message_key)
);
CREATE INDEX ix_safesync_inbox_processed_at ON safesync_inbox (processed_at);

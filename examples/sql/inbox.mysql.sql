CREATE TABLE safesync_inbox (
    stream VARBINARY(255) NOT NULL,
    consumer_group VARBINARY(255) NOT NULL,
    message_key VARBINARY(255) NOT NULL,
    message_id VARCHAR(64) NOT NULL,
    processed_at DATETIME NOT NULL,
    PRIMARY KEY (stream, consumer_group, message_key)
);
CREATE INDEX ix_safesync_inbox_processed_at ON safesync_inbox (processed_at);

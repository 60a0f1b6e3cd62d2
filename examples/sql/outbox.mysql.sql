CREATE TABLE safesync_outbox (
    id BIGINT NOT NULL AUTO_INCREMENT,
    stream VARCHAR(190) NOT NULL,
    fields BLOB(4294967295) NOT NULL,
    created_at DATETIME NOT NULL,
    sent_at DATETIME,
    entry_id VARCHAR(64),
    PRIMARY KEY (id)
);
CREATE INDEX ix_safesync_outbox_unsent ON safesync_outbox (sent_at, id);

ALTER TABLE safesync_inbox
    ALTER COLUMN stream TYPE bytea USING convert_to(stream, 'UTF8'),
    ALTER COLUMN consumer_group TYPE bytea USING convert_to(consumer_group, 'UTF8'),
    ALTER COLUMN message_key TYPE bytea USING convert_to(message_key, 'UTF8');

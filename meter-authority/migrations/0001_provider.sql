-- meter-authority serve: the provider's state (see src/store/pg.rs).
-- One row per meter, locked (SELECT ... FOR UPDATE) by every change to it.
CREATE TABLE meters (
    meter_id     text PRIMARY KEY,
    -- The meter's book (book.rs, JSON): vouchers issued, acknowledged points, ...
    book         jsonb NOT NULL,
    next_voucher bigint NOT NULL DEFAULT 1 CHECK (next_voucher >= 1)
);

-- Every top-up sold: one voucher per (meter, client purchase id).
CREATE TABLE purchases (
    meter_id    text NOT NULL REFERENCES meters,
    purchase_id text NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    sequence    bigint NOT NULL,
    voucher     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, purchase_id),
    UNIQUE (meter_id, sequence)
);

-- The answer to every report upload (keyed by the SHA-256 of the upload).
CREATE TABLE uploads (
    meter_id   text NOT NULL REFERENCES meters,
    upload_key bytea NOT NULL,
    accepted   boolean NOT NULL,
    answer     bytea NOT NULL,
    findings   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, upload_key)
);

-- Rows of acknowledged segments a lookup finds (book.rs IndexRow).
CREATE TABLE index_rows (
    meter_id text NOT NULL REFERENCES meters,
    seq      bigint NOT NULL,
    time_ms  bigint NOT NULL,
    service  smallint NOT NULL,
    digest   bytea NOT NULL,
    PRIMARY KEY (meter_id, seq)
);
CREATE INDEX index_rows_digest ON index_rows (digest);

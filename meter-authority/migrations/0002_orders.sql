-- Orders the operator queued for a meter (clear-lock, ...), fetched by the
-- meter with GET /v1/meters/{id}/pending until its acknowledged report shows
-- the order applied (src/store/pending.rs). One row per (meter, order key).
CREATE TABLE orders (
    meter_id   text NOT NULL REFERENCES meters,
    order_id   text NOT NULL,
    der        bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, order_id)
);

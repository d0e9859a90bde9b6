-- meter-authority serve: settlements and certifications (src/store/settle.rs,
-- src/store/certify.rs).

-- Every payment certificate settled, once, for the creditor that brought it.
CREATE TABLE settlements (
    payment_serial text PRIMARY KEY,
    credit_serial  text NOT NULL,
    amount         bigint NOT NULL CHECK (amount >= 0),
    creditor       text NOT NULL,
    -- SHA-256 of the payment certificate DER: a retry brings the same bytes.
    payment_digest bytea NOT NULL,
    -- The answer (credit.rs Settlement, JSON), returned again on retry.
    settlement     jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX settlements_line ON settlements (credit_serial);

-- The certificates issued to each meter over the API, keyed by the SHA-256
-- of its request: the same request gets the same answer.
CREATE TABLE certifications (
    meter_id    text PRIMARY KEY,
    request_key bytea NOT NULL,
    answer      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

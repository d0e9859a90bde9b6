-- meter-authority serve: the register of issued certificates and the serial
-- counter (src/store/certify.rs), in the database instead of the authority
-- directory's state.json, read per meter at each report upload.

-- Serials of the certificates issued over the API. nextval never hands a
-- value out twice, even when the transaction that took it rolls back (a
-- crash leaves a gap, never a reuse). They start at 2^32
-- (state::DATABASE_SERIALS): the directory's counter, which the command
-- line uses, stays below, so the two registers never issue the same serial.
CREATE SEQUENCE certificate_serial AS bigint
    MINVALUE 4294967296 START WITH 4294967296 NO CYCLE;

-- Every certificate issued with a serial of the sequence.
CREATE TABLE certificates (
    serial     bigint PRIMARY KEY CHECK (serial >= 4294967296),
    -- The subject's common name: the meter id.
    subject_cn text NOT NULL,
    -- state.rs Issued.profile: MeterIdentity, Postmark, ...
    profile    text NOT NULL,
    -- notAfter, unix seconds.
    not_after  bigint NOT NULL,
    -- The certificate (DER).
    der        bytea NOT NULL,
    issued_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificates_subject ON certificates (subject_cn);

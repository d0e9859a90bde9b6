-- The database's own identity: a random id made once, with the schema.
-- An authority directory served from this database records it in its
-- `database` mark (src/store/marker.rs) and refuses any other database
-- from then on: a database that has never seen the directory's meters
-- would start them at voucher 1 again, a sequence this one already sold.
-- A copy of this database (pg_dump and restore) keeps the id, so moving
-- the database to another server is not refused.
CREATE TABLE store_identity (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    id  text NOT NULL
);
INSERT INTO store_identity (id)
    VALUES (md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text));

-- A top-up may name the register its voucher credits (issue 17: `postage`
-- or `services`); NULL names none, as every purchase before. A retry of the
-- purchase id with another register is a conflict (src/store/mod.rs).
ALTER TABLE purchases ADD COLUMN register text
    CHECK (register IN ('postage', 'services'));

//! TPM 2.0 implementation of the housing over tss-esapi (to be written).

//! Crash loops (issue 7, item 1): clients postmark while meterd is killed
//! with SIGKILL at a random moment; after each restart the cross-check of
//! [`crate::verify`] runs on everything the clients sent.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::load::{self, Spec};
use crate::sandbox::Sandbox;
use crate::summary::Tally;
use crate::verify::verify;

/// A small xorshift generator: random kill moments without a dependency,
/// reproducible from the seed printed in the log.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Next value in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi.saturating_sub(lo).max(1))
    }
}

/// Runs `iterations` crash loops with `clients` clients.
pub async fn run(sb: &Sandbox, iterations: u64, clients: usize, seed: u64) -> Result<Tally> {
    let mut total = Tally::default();
    let mut rng = Rng::new(seed);
    eprintln!("torture: crash: seed {seed}");
    for it in 0..iterations {
        let prefix = format!("crash-{it}-");
        let spec = Spec::new(clients, 20_000, &prefix);
        let stop = spec.stop.clone();
        let sb2 = sb.clone();
        let load = tokio::spawn(async move { load::run(&sb2, spec).await });
        let kill_after = rng.range(50, 1_200);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        let t0 = Instant::now();
        sb.kill_meterd()?;
        // The calls in flight at the kill fail; start no new ones.
        stop.store(true, Ordering::Relaxed);
        let attempts = load.await??;
        let sb2 = sb.clone();
        tokio::task::spawn_blocking(move || sb2.script("start-meterd", &[])).await??;
        let restart = t0.elapsed();
        let mut t = verify(sb, &prefix, &attempts, clients).await?;
        t.operations += attempts.len() as u64;
        eprintln!(
            "torture: crash {}/{iterations}: killed after {kill_after} ms, {} calls ({} products, failures {:?}), back in {:.2} s; losses {} doubles {} missed {} faults {}",
            it + 1,
            attempts.len(),
            load::products(&attempts),
            load::failure_kinds(&attempts),
            restart.as_secs_f64(),
            t.losses,
            t.doubles,
            t.missed,
            t.faults
        );
        total.absorb(t);
        total.iterations += 1;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn rng_stays_in_range_and_varies() {
        let mut r = Rng::new(42);
        let v: Vec<u64> = (0..1000).map(|_| r.range(50, 1200)).collect();
        assert!(v.iter().all(|x| (50..1200).contains(x)));
        assert!(v.iter().min() < Some(&200) && v.iter().max() > Some(&1000));
        // Reproducible from the seed.
        let mut again = Rng::new(42);
        assert_eq!(again.range(50, 1200), v[0]);
    }
}

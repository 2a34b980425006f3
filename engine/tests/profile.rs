//! `--profile` tables on the emulated GPU path: ranges are timed by kind and
//! kernel launches by family.

use engine::profile::{self, Kind};
use engine::{Device, Tape, Tensor, nvtx};

#[test]
fn ranges_and_kernel_families_are_timed() {
    let x = Tensor::from_vec(
        (0..300).map(|i| i as f32 - 150.0).collect::<Vec<_>>(),
        [300],
    )
    .unwrap()
    .to_device(Device::Emulator)
    .unwrap();
    // Nothing is recorded while the profiler is off.
    {
        let _p = nvtx::phase("before");
        let mut tape = Tape::no_grad();
        tape.relu(&tape.constant(x.clone())).unwrap();
    }
    profile::start(Device::Emulator).unwrap();
    for step in 0..2 {
        let _s = nvtx::open(Kind::Step, || format!("step {step}"));
        let _p = nvtx::phase("forward");
        let mut tape = Tape::no_grad();
        let v = tape.constant(x.clone());
        let _l = nvtx::range("layer");
        let y = tape.relu(&v).unwrap();
        tape.add(&y, &v).unwrap();
    }
    let report = profile::finish().unwrap();
    let calls =
        |rows: &[profile::Row], name: &str| rows.iter().find(|r| r.name == name).map(|r| r.calls);
    assert_eq!(report.steps.iter().map(|r| r.calls).sum::<u64>(), 2);
    assert_eq!(calls(&report.phases, "forward"), Some(2));
    assert_eq!(calls(&report.phases, "before"), None);
    assert_eq!(calls(&report.layers, "layer"), Some(2));
    assert_eq!(
        calls(&report.kernels, "elementwise"),
        Some(4),
        "two ReLUs and two adds"
    );
    assert!(report.kernels.iter().all(|r| r.ms >= 0.0));
    let text = report.to_string();
    assert!(
        text.contains("2 steps") && text.contains("kernel family"),
        "{text}"
    );
    assert!(!profile::is_on());
}

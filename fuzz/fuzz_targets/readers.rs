//! Every reader of `trainer::mutation::Reader` under libFuzzer: the first
//! byte picks the reader, the rest is its input. A panic, a hang or an
//! out-of-memory is a finding; an error is a correct answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trainer::mutation::Reader;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let reader = Reader::ALL[pick as usize % Reader::ALL.len()];
    let scratch = std::env::temp_dir().join(format!("m2t-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("a scratch folder");
    let _ = reader.read(input, &scratch);
});

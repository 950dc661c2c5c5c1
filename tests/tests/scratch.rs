#[test]
fn loads() {
    let mut bpf = aya::Ebpf::load(secgate::EBPF_OBJECT).unwrap();
    let prog: &mut aya::programs::Xdp = bpf.program_mut("secgate").unwrap().try_into().unwrap();
    match prog.load() {
        Ok(()) => println!("loaded"),
        Err(e) => {
            if let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e {
                let s = verifier_log.to_string();
                let n = s.len();
                println!("{}", &s[n.saturating_sub(6000)..]);
            }
            panic!("{e}");
        }
    }
}

//! The names a KernelJob's `spec.env` may never set: everything below the job reads them
//! (the agent and its bootstrap, the shell, the dynamic loader, git, compilers, Python and
//! other interpreters, TLS and proxy settings, GPU runtimes, the harness, benchkite itself).
//!
//! One list serves the CRD's CEL rule on `spec.env` (refused at admission) and the
//! controller's own check (defence in depth: a cluster with an older CRD). Names are
//! compared case-insensitively: refusing `path` costs nothing, and some tools read
//! lower-case variants (`http_proxy`).
//!
//! On top of this deny list, the controller's `--kerneljob-env-allow` says which of the
//! remaining names a job may set (default: none; see `kerneljob::policy`).

/// Name prefixes (upper case) a job may not set, with what reads them.
pub const DENIED_PREFIXES: &[(&str, &str)] = &[
    ("BUILDKITE", "the Buildkite agent"),
    ("KERNELBOT_", "benchkite (the payload and run id)"),
    ("BENCHKITE_", "benchkite"),
    ("POPCORN_", "the evaluation harness"),
    ("LD_", "the dynamic loader"),
    ("GLIBC_", "the C library"),
    ("MALLOC_", "the C library"),
    ("BASH", "the shell"),
    ("GIT_", "git"),
    ("SSH_", "ssh and git"),
    ("PYTHON", "Python"),
    ("PIP_", "pip"),
    ("CONDA_", "conda"),
    ("VIRTUAL_ENV", "Python"),
    ("PERL", "Perl"),
    ("RUBY", "Ruby"),
    ("GEM_", "Ruby"),
    ("NODE_", "Node.js"),
    ("NPM_", "npm"),
    ("JAVA_", "Java"),
    ("_JAVA_", "Java"),
    ("JDK_", "Java"),
    ("CUDA_", "the CUDA runtime (which GPU, caches, blocking launches)"),
    ("NVIDIA_", "the NVIDIA container runtime"),
    ("NV_", "NVIDIA tools"),
    ("__NV_", "the NVIDIA driver"),
    ("NVCC_", "nvcc"),
    ("NCCL_", "NCCL"),
    ("CUBLAS", "cuBLAS"),
    ("CUDNN_", "cuDNN"),
    ("HIP_", "the ROCm runtime"),
    ("HSA_", "the ROCm runtime"),
    ("ROCR_", "the ROCm runtime"),
    ("ROCM_", "the ROCm runtime"),
    ("TORCH", "PyTorch"),
    ("TRITON_", "Triton"),
    ("GCC_", "gcc"),
    ("CCACHE_", "ccache"),
    ("SSL_", "TLS libraries"),
    ("OPENSSL_", "OpenSSL"),
    ("CURL_", "curl"),
    ("REQUESTS_", "Python requests"),
    ("XDG_", "configuration lookup of most tools"),
    ("LC_", "the C library's locale"),
    ("KUBERNETES_", "Kubernetes service discovery"),
];

/// Whole names (upper case) a job may not set, with what reads them.
pub const DENIED_NAMES: &[(&str, &str)] = &[
    ("PATH", "the shell (which programs run)"),
    ("HOME", "the shell and every tool's configuration"),
    ("SHELL", "the agent and the shell"),
    ("ENV", "the shell (a file it runs)"),
    ("IFS", "the shell"),
    ("CDPATH", "the shell"),
    ("GLOBIGNORE", "the shell"),
    ("SHELLOPTS", "the shell"),
    ("POSIXLY_CORRECT", "the shell"),
    ("PS1", "the shell"),
    ("PS2", "the shell"),
    ("PS3", "the shell"),
    ("PS4", "the shell (run on every traced command)"),
    ("PROMPT_COMMAND", "the shell"),
    ("HISTFILE", "the shell"),
    ("INPUTRC", "the shell"),
    ("PWD", "the shell"),
    ("OLDPWD", "the shell"),
    ("USER", "the agent and the shell"),
    ("LOGNAME", "the agent and the shell"),
    ("TMPDIR", "every tool's scratch files"),
    ("TMP", "every tool's scratch files"),
    ("TEMP", "every tool's scratch files"),
    ("LANG", "the C library's locale"),
    ("LANGUAGE", "the C library's locale"),
    ("LOCPATH", "the C library (locale files it loads)"),
    ("GCONV_PATH", "the C library (modules it loads)"),
    ("NLSPATH", "the C library"),
    ("TZDIR", "the C library"),
    ("HOSTALIASES", "the resolver"),
    ("LOCALDOMAIN", "the resolver"),
    ("RES_OPTIONS", "the resolver"),
    ("TERMINFO", "terminal libraries (files they load)"),
    ("TERMINFO_DIRS", "terminal libraries (files they load)"),
    ("EDITOR", "git"),
    ("VISUAL", "git"),
    ("PAGER", "git"),
    ("CLASSPATH", "Java"),
    ("CC", "build tools"),
    ("CXX", "build tools"),
    ("CPP", "build tools"),
    ("CFLAGS", "build tools"),
    ("CXXFLAGS", "build tools"),
    ("CPPFLAGS", "build tools"),
    ("LDFLAGS", "build tools"),
    ("CPATH", "the C compiler (include paths)"),
    ("C_INCLUDE_PATH", "the C compiler (include paths)"),
    ("CPLUS_INCLUDE_PATH", "the C compiler (include paths)"),
    ("LIBRARY_PATH", "the linker"),
    ("COMPILER_PATH", "the C compiler"),
    ("DEPENDENCIES_OUTPUT", "the C compiler"),
    ("SUNPRO_DEPENDENCIES", "the C compiler"),
    ("OMP_NUM_THREADS", "OpenMP (CPU use of the evaluation)"),
    ("MKL_NUM_THREADS", "MKL (CPU use of the evaluation)"),
    ("OPENBLAS_NUM_THREADS", "OpenBLAS (CPU use of the evaluation)"),
];

/// Suffixes (upper case) a job may not set: proxy settings of curl, git, pip, requests.
pub const DENIED_SUFFIXES: &[(&str, &str)] = &[("_PROXY", "HTTP clients (proxies)")];

/// Why `name` may not be set (what reads it), or `None` if the deny list allows it.
pub fn denied(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    DENIED_NAMES
        .iter()
        .find(|(n, _)| *n == upper)
        .or_else(|| DENIED_PREFIXES.iter().find(|(p, _)| upper.starts_with(p)))
        .or_else(|| DENIED_SUFFIXES.iter().find(|(s, _)| upper.ends_with(s)))
        .map(|(_, why)| *why)
}

/// Whether `name` is a valid variable name (a C identifier).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn alternation(items: &[(&str, &str)]) -> String {
    items.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join("|")
}

/// The CEL rule (for `spec.env`) that refuses every denied name, case-insensitively.
pub fn cel_rule() -> String {
    format!(
        "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$') && !k.matches('(?i)^(({names})$|({prefixes})|.*({suffixes})$)'))",
        names = alternation(DENIED_NAMES),
        prefixes = alternation(DENIED_PREFIXES),
        suffixes = alternation(DENIED_SUFFIXES),
    )
}

/// The message of [`cel_rule`]: what is refused and why.
pub const CEL_MESSAGE: &str = "env names must be identifiers and may not set anything the agent, the shell, the dynamic loader, git, compilers, Python and other interpreters, TLS/proxy settings, the GPU runtime, the harness or benchkite read: refused are PATH, HOME, SHELL, ENV, IFS, PS4, TMPDIR, LANG and other shell/libc names, the prefixes BUILDKITE, KERNELBOT_, BENCHKITE_, POPCORN_, LD_, GLIBC_, BASH, GIT_, SSH_, PYTHON, PIP_, PERL, RUBY, NODE_, JAVA_, CUDA_, NVIDIA_, NV_, NVCC_, NCCL_, HIP_, TORCH, TRITON_, SSL_, OPENSSL_, XDG_, LC_ (and more, see benchkite's docs) and every *_PROXY, in any case; a job may set only names the controller's --kerneljob-env-allow lists";

/// The schema of `spec.env`: a bounded string map with [`cel_rule`].
pub fn env_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": 16384 },
        "x-kubernetes-validations": [{ "rule": cel_rule(), "message": CEL_MESSAGE }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_lies_below_the_job_is_refused_in_any_case() {
        for name in [
            "PATH",
            "path",
            "HOME",
            "BASH_ENV",
            "BASH_FUNC_echo%%",
            "ENV",
            "IFS",
            "PS4",
            "PROMPT_COMMAND",
            "LD_PRELOAD",
            "ld_library_path",
            "GLIBC_TUNABLES",
            "GIT_SSH_COMMAND",
            "GIT_CONFIG_GLOBAL",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "PERL5OPT",
            "RUBYOPT",
            "NODE_OPTIONS",
            "CUDA_VISIBLE_DEVICES",
            "CUDA_LAUNCH_BLOCKING",
            "NVIDIA_VISIBLE_DEVICES",
            "NVCC_PREPEND_FLAGS",
            "TORCH_CUDA_ARCH_LIST",
            "TORCHINDUCTOR_CACHE_DIR",
            "TRITON_CACHE_DIR",
            "TMPDIR",
            "SSL_CERT_FILE",
            "OPENSSL_CONF",
            "https_proxy",
            "NO_PROXY",
            "POPCORN_FD",
            "KERNELBOT_PAYLOAD",
            "BENCHKITE_RESULT_KEY",
            "BUILDKITE_AGENT_ACCESS_TOKEN",
            "GCONV_PATH",
            "LC_ALL",
            "XDG_CONFIG_HOME",
            "SHELL",
            "HIP_VISIBLE_DEVICES",
        ] {
            assert!(denied(name).is_some(), "{name} must be refused");
        }
        for name in ["MY_FLAG", "SIZE", "EXPERIMENT", "CHAOS_OUTCOME", "SEED_OFFSET", "PATHS_USED"] {
            assert_eq!(denied(name), None, "{name} is read by nothing below the job");
        }
    }

    #[test]
    fn the_cel_rule_names_every_denied_entry() {
        let rule = cel_rule();
        for (s, _) in DENIED_NAMES.iter().chain(DENIED_PREFIXES).chain(DENIED_SUFFIXES) {
            assert!(rule.contains(s), "{s} missing from {rule}");
            // Regex metacharacters would change what the rule refuses.
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{s}");
        }
        assert!(rule.contains("(?i)"));
    }

    #[test]
    fn names_are_identifiers() {
        assert!(valid_name("A_1") && valid_name("_x"));
        assert!(!valid_name("1A") && !valid_name("") && !valid_name("A-B") && !valid_name("A B"));
    }
}

//! TLS for the library's own HTTP clients (Intercom's API, deliveries to users' endpoints): rustls with
//! ring's cryptography, the same stack as the AWS SDK's client ([`crate::aws::https_client`]), and the
//! platform's root certificates (`tests/it/tls.rs` checks both against a local HTTPS server).

/// A reqwest client builder whose TLS is rustls with ring. Makes ring the process's rustls provider if
/// none is installed yet (a program that embeds the library and installed its own keeps it).
pub fn client_builder() -> reqwest::ClientBuilder {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one meanwhile: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_builds_with_ring_as_the_provider() {
        let client = super::client_builder().build();
        assert!(client.is_ok(), "{client:?}");
        let provider = rustls::crypto::CryptoProvider::get_default().expect("a provider is installed");
        assert_eq!(format!("{:?}", provider.secure_random), "Ring");
    }
}

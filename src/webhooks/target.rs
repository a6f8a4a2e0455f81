//! Where the gateway may send: the SSRF rule.
//!
//! An endpoint URL is `http` or `https`, at most 2,048 characters, without
//! credentials or a fragment. At creation a host that is an address literal
//! is checked at once; at every delivery the host is resolved and **every**
//! address it resolves to is checked (the core's `refused_address`:
//! loopback, unspecified, private, shared, link-local — where the cloud
//! metadata services answer —, multicast), and the call then goes to the
//! checked address, pinned, so a second lookup cannot swap it (DNS
//! rebinding). Redirects are never followed: a 3xx is a failed attempt. The
//! gateway's own listening address is refused whatever
//! `webhooks.allow_private_targets` says.

use std::net::{IpAddr, SocketAddr};

use formid_core::webhooks::refused_address;
use reqwest::Url;

/// Longest endpoint URL.
pub const MAX_URL_LENGTH: usize = 2_048;

/// Why an endpoint URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the URL is not valid: {0}")]
    Invalid(String),
    #[error("the URL's host resolves to a {0} address, which the gateway never calls")]
    Refused(&'static str),
    #[error("the URL points at the gateway itself")]
    Gateway,
    #[error("the URL's host did not resolve: {0}")]
    Unresolved(String),
}

/// What may be called: the rule's two inputs.
#[derive(Debug, Clone, Copy)]
pub struct TargetRule {
    /// `webhooks.allow_private_targets`.
    pub allow_private: bool,
    /// The gateway's own listening address, never a target.
    pub own: Option<SocketAddr>,
}

impl TargetRule {
    /// Checks an endpoint URL as given (no lookup): its shape, and its host
    /// when that is an address.
    pub fn check_url(&self, text: &str) -> Result<Url, TargetError> {
        if text.len() > MAX_URL_LENGTH {
            return Err(TargetError::Invalid(format!(
                "longer than {MAX_URL_LENGTH} characters"
            )));
        }
        let url = Url::parse(text).map_err(|error| TargetError::Invalid(error.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetError::Invalid(
                "the scheme must be http or https".into(),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Invalid("credentials in the URL".into()));
        }
        if url.fragment().is_some() {
            return Err(TargetError::Invalid("a fragment".into()));
        }
        let Some(host) = url.host_str() else {
            return Err(TargetError::Invalid("no host".into()));
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if let Some(ip) = literal {
            self.check_address(SocketAddr::new(ip, port))?;
        }
        Ok(url)
    }

    /// Checks one address the URL's host resolved to.
    pub fn check_address(&self, address: SocketAddr) -> Result<(), TargetError> {
        if let Some(own) = self.own {
            let ip = address.ip();
            let same_host = ip == own.ip()
                || ((ip.is_loopback() || ip.is_unspecified())
                    && (own.ip().is_loopback() || own.ip().is_unspecified()));
            if same_host && address.port() == own.port() {
                return Err(TargetError::Gateway);
            }
        }
        match refused_address(address.ip(), self.allow_private) {
            Some(reason) => Err(TargetError::Refused(reason)),
            None => Ok(()),
        }
    }

    /// Resolves the URL's host and checks every address: the one to call.
    pub async fn resolve(&self, url: &Url) -> Result<SocketAddr, TargetError> {
        let host = url
            .host_str()
            .ok_or_else(|| TargetError::Invalid("no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().unwrap_or(80);
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| TargetError::Unresolved(error.to_string()))?
            .collect();
        let first = *addresses
            .first()
            .ok_or_else(|| TargetError::Unresolved("no address".into()))?;
        for address in &addresses {
            self.check_address(*address)?;
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> TargetRule {
        TargetRule {
            allow_private: false,
            own: Some("127.0.0.1:8080".parse().unwrap()),
        }
    }

    #[test]
    fn hostile_urls_are_refused() {
        for url in [
            "http://127.0.0.1:9000/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://10.0.0.1/",
            "http://0.0.0.0:8080/",
            "http://[::ffff:127.0.0.1]/",
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://user:pass@example.com/",
            "http://example.com/#frag",
            "not a url",
            "http://",
        ] {
            assert!(strict().check_url(url).is_err(), "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LENGTH));
        assert!(strict().check_url(&long).is_err());
        assert!(strict().check_url("https://example.com/hooks?x=1").is_ok());
    }

    #[test]
    fn the_gateway_itself_is_refused_even_when_private_targets_are_allowed() {
        let open = TargetRule {
            allow_private: true,
            ..strict()
        };
        assert_eq!(
            open.check_url("http://127.0.0.1:8080/x").unwrap_err(),
            TargetError::Gateway
        );
        assert_eq!(
            open.check_url("http://localhost:8080/x").map(|_| ()),
            Ok(())
        );
        assert!(open.check_url("http://127.0.0.1:9000/x").is_ok());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_at_delivery() {
        let url = strict().check_url("http://localhost:9000/x").unwrap();
        assert!(matches!(
            strict().resolve(&url).await,
            Err(TargetError::Refused("loopback"))
        ));
        let own = strict().check_url("http://localhost:8080/x").unwrap();
        let open = TargetRule {
            allow_private: true,
            ..strict()
        };
        assert_eq!(open.resolve(&own).await, Err(TargetError::Gateway));
    }
}

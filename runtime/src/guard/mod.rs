//! The address guard: a webhook, or a workflow's HTTP step, may only reach a
//! public address, unless the operator allows a receiver by network or name.
//! A URL is checked when a job names it and again at every delivery; the delivery connects only to the
//! addresses that the guard passed at that moment (the client's resolver is
//! this guard), and follows no redirects, so neither DNS rebinding nor a
//! redirect reaches an internal service.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

mod special;

use special::blocked;

/// One entry of an allowlist (`broker.webhooks.allow`, `workflow_engine.allow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    Net(IpNet),
    Host(String),
}

impl AllowEntry {
    pub fn parse(text: &str) -> Option<AllowEntry> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(AllowEntry::Net(net));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(AllowEntry::Net(IpNet::from(ip)));
        }
        let valid = !text.is_empty()
            && text.len() <= 253
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        valid.then(|| AllowEntry::Host(text.to_ascii_lowercase()))
    }
}

/// One allowlist, and the checks that use it.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Arc<Vec<AllowEntry>>,
}

impl Guard {
    pub fn new(entries: &[String]) -> Guard {
        Guard {
            allow: Arc::new(
                entries
                    .iter()
                    .filter_map(|e| AllowEntry::parse(e))
                    .collect(),
            ),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow
            .iter()
            .any(|e| matches!(e, AllowEntry::Host(h) if *h == host))
    }

    fn ip_allowed(&self, ip: IpAddr) -> Result<(), String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self
            .allow
            .iter()
            .any(|e| matches!(e, AllowEntry::Net(n) if n.contains(&ip)))
        {
            return Ok(());
        }
        match blocked(ip) {
            Some(why) => Err(format!("{ip} is an internal address ({why})")),
            None => Ok(()),
        }
    }

    /// Checks a URL's form, and the address it names when it names one.
    /// Returns the host name still to be resolved, if any.
    pub fn check_form(&self, text: &str) -> Result<(Url, Option<String>), String> {
        if text.len() > 2048 {
            return Err("is longer than 2048 bytes".into());
        }
        let url = Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {:?} is not http or https", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        let name = match url.host() {
            None => return Err("has no host".into()),
            Some(url::Host::Ipv4(ip)) => {
                self.ip_allowed(IpAddr::V4(ip))?;
                None
            }
            Some(url::Host::Ipv6(ip)) => {
                self.ip_allowed(IpAddr::V6(ip))?;
                None
            }
            Some(url::Host::Domain(name)) => (!self.host_allowed(name)).then(|| name.to_owned()),
        };
        Ok((url, name))
    }

    /// Checks a URL a job names: its form, and every address its host
    /// resolves to now.
    pub async fn check(&self, text: &str) -> Result<Url, String> {
        let (url, name) = self.check_form(text)?;
        if let Some(name) = name {
            let addrs = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|e| format!("host {name:?} does not resolve: {e}"))?;
            for addr in addrs {
                // The address is not told: a refusal must not map the
                // internal network for whoever names hosts in it.
                self.ip_allowed(addr.ip())
                    .map_err(|_| format!("host {name:?} resolves to an internal address"))?;
            }
        }
        Ok(url)
    }

    /// Resolves a host for a delivery, keeping only the addresses it may reach.
    async fn resolve(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        let all: Vec<SocketAddr> = tokio::net::lookup_host((name, 0))
            .await
            .map_err(|e| format!("host {name:?} does not resolve: {e}"))?
            .collect();
        if self.host_allowed(name) {
            return Ok(all);
        }
        let passed: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.ip_allowed(a.ip()).is_ok())
            .collect();
        match (passed.is_empty(), all.first()) {
            (false, _) => Ok(passed),
            (true, Some(_)) => Err(format!("host {name:?} resolves to an internal address")),
            (true, None) => Err(format!("host {name:?} has no address")),
        }
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let addrs = Guard::resolve(&guard, name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(guard: &Guard, url: &str) -> String {
        guard.check_form(url).err().unwrap_or_default()
    }

    #[test]
    fn internal_addresses_are_refused() {
        let guard = Guard::default();
        for (url, why) in [
            ("http://127.0.0.1/", "loopback"),
            ("http://127.8.9.10:8080/x", "loopback"),
            ("http://[::1]/", "loopback"),
            ("http://10.1.2.3/", "private"),
            ("http://172.16.0.1/", "private"),
            ("http://192.168.1.1/", "private"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://100.100.100.200/", "carrier-grade NAT"),
            ("http://[fd00:ec2::254]/", "unique local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://224.0.0.1/", "multicast"),
            ("http://0.0.0.0/", "this-network"),
            ("http://[::127.0.0.1]/", "IPv4-compatible"),
            ("http://[::a9fe:a9fe]/", "IPv4-compatible"),
            ("http://[fec0::1]/", "site-local"),
            ("http://[64:ff9b:1::a00:1]/", "translation"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://[::ffff:169.254.169.254]/", "link-local"),
            ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),
            ("http://[2002:7f00:1::]/", "loopback"),
            // Numeric forms that some resolvers read as 127.0.0.1.
            ("http://2130706433/", "loopback"),
            ("http://0x7f.1/", "loopback"),
        ] {
            let err = refused(&guard, url);
            assert!(err.contains(why), "{url}: {err:?}");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_form_check() {
        let guard = Guard::default();
        assert_eq!(guard.check_form("https://8.8.8.8/hook").unwrap().1, None);
        let (_, name) = guard.check_form("https://hooks.example.com/x").unwrap();
        assert_eq!(name.as_deref(), Some("hooks.example.com"));
        assert!(guard.check_form("http://[2606:4700::1111]/").is_ok());
    }

    #[test]
    fn bad_forms_are_refused() {
        let guard = Guard::default();
        assert!(refused(&guard, "ftp://8.8.8.8/").contains("scheme"));
        assert!(refused(&guard, "file:///etc/passwd").contains("scheme"));
        assert!(refused(&guard, "http://user:pw@8.8.8.8/").contains("credentials"));
        assert!(refused(&guard, "not a url").contains("not a URL"));
        assert!(refused(&guard, &format!("http://a.com/{}", "x".repeat(2050))).contains("2048"));
    }

    #[test]
    fn the_allowlist_admits_networks_and_names() {
        let guard = Guard::new(&["127.0.0.1/32".into(), "hooks.internal".into()]);
        assert!(guard.check_form("http://127.0.0.1:9000/").is_ok());
        assert!(guard.check_form("http://[::ffff:127.0.0.1]/").is_ok());
        assert!(refused(&guard, "http://127.0.0.2/").contains("loopback"));
        assert_eq!(guard.check_form("http://HOOKS.internal./").unwrap().1, None);
        assert!(AllowEntry::parse("not a host!").is_none());
    }

    #[tokio::test]
    async fn names_are_resolved_and_every_address_checked() {
        let guard = Guard::default();
        let err = guard.check("http://localhost:1/").await.unwrap_err();
        assert!(err.contains("internal address"), "{err}");
        let err = guard.resolve("localhost").await.unwrap_err();
        assert!(err.contains("internal address"), "{err}");
        // The internal address itself is not told.
        assert!(!err.contains("127.0.0.1") && !err.contains("::1"), "{err}");
        let allowed = Guard::new(&["127.0.0.0/8".into(), "::1".into()]);
        assert!(allowed.check("http://localhost:1/").await.is_ok());
        assert!(!allowed.resolve("localhost").await.unwrap().is_empty());
    }
}

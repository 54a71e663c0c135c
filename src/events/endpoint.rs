//! Where events are sent: a region's API host or an explicit base URL.

use std::str::FromStr;

use reqwest::Url;

use super::error::ClientConfigError;

/// The data-hosting region of the Intercom workspace; each has its own API host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Region {
    #[default]
    Us,
    Eu,
    Au,
}

impl Region {
    pub fn base_url(self) -> &'static str {
        match self {
            Region::Us => "https://api.intercom.io",
            Region::Eu => "https://api.eu.intercom.io",
            Region::Au => "https://api.au.intercom.io",
        }
    }
}

impl FromStr for Region {
    type Err = ClientConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "us" => Ok(Region::Us),
            "eu" => Ok(Region::Eu),
            "au" => Ok(Region::Au),
            _ => Err(ClientConfigError::UnknownRegion { value: value.into() }),
        }
    }
}

/// Where events are sent: a region's API host, or an explicit base URL (a proxy, a mock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Region(Region),
    BaseUrl(Url),
}

impl Endpoint {
    /// An explicit base URL: `http` or `https`, with a host, without a query or fragment. `/events` is
    /// appended to its path.
    pub fn base_url(raw: &str) -> Result<Self, ClientConfigError> {
        let invalid = |reason: &str| ClientConfigError::InvalidBaseUrl {
            value: raw.into(),
            reason: reason.into(),
        };
        let url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("a host is required"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        Ok(Endpoint::BaseUrl(url))
    }

    /// `{base}/events`.
    pub fn events_url(&self) -> Url {
        self.url("events")
    }

    /// `{base}/{path}` (`path` without a leading slash, e.g. `conversations/search`).
    pub fn url(&self, path: &str) -> Url {
        let base = match self {
            Endpoint::Region(region) => region.base_url(),
            Endpoint::BaseUrl(url) => url.as_str(),
        };
        let joined = format!("{}/{path}", base.trim_end_matches('/'));
        Url::parse(&joined).expect("a valid base URL with a path appended is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_base_urls() {
        assert_eq!("EU".parse::<Region>().unwrap(), Region::Eu);
        assert_eq!(" au ".parse::<Region>().unwrap(), Region::Au);
        assert!(matches!(
            "mars".parse::<Region>(),
            Err(ClientConfigError::UnknownRegion { value }) if value == "mars"
        ));
        assert_eq!(
            Endpoint::Region(Region::Us).events_url().as_str(),
            "https://api.intercom.io/events"
        );
        assert_eq!(
            Endpoint::Region(Region::Eu).events_url().as_str(),
            "https://api.eu.intercom.io/events"
        );
        assert_eq!(
            Endpoint::Region(Region::Au).events_url().as_str(),
            "https://api.au.intercom.io/events"
        );
        let custom = Endpoint::base_url("http://127.0.0.1:8080/proxy/").unwrap();
        assert_eq!(custom.events_url().as_str(), "http://127.0.0.1:8080/proxy/events");
        for bad in ["ftp://x.example", "not a url", "http://x.example/?a=1"] {
            assert!(
                matches!(
                    Endpoint::base_url(bad),
                    Err(ClientConfigError::InvalidBaseUrl { .. })
                ),
                "{bad}"
            );
        }
    }
}

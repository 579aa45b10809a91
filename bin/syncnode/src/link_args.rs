//! The lab's link-emulation flags of `syncnode run` and `syncnode devnet`, marked LAB ONLY in
//! `--help`: they make a node slower on purpose. docs/lab.md describes the emulation.

use std::time::Duration;

use clap::Args;
use syncnode_network::LinkConfig;

/// `--link-delay`, `--link-bandwidth`, `--link-loss`: none given, no emulation.
#[derive(Debug, Clone, Default, Args)]
pub struct LinkArgs {
    /// LAB ONLY: one-way delay added to everything this node sends (e.g. `50ms`, `0.1s`).
    #[arg(long, value_parser = parse_delay)]
    pub link_delay: Option<Duration>,
    /// LAB ONLY: this node's upload bandwidth, shared by all its connections (e.g. `20mbit`,
    /// `512kbit`, `2mbyte`).
    #[arg(long, value_parser = parse_bandwidth)]
    pub link_bandwidth: Option<u64>,
    /// LAB ONLY: probability that a TCP segment is lost (0..1), paid as a retransmission timeout.
    #[arg(long, value_parser = parse_loss)]
    pub link_loss: Option<f64>,
}

impl LinkArgs {
    /// These flags as `syncnode run` reads them back.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(delay) = self.link_delay {
            flags.extend(["--link-delay".into(), format!("{}us", delay.as_micros())]);
        }
        if let Some(rate) = self.link_bandwidth {
            flags.extend(["--link-bandwidth".into(), format!("{rate}byte")]);
        }
        if let Some(loss) = self.link_loss {
            flags.extend(["--link-loss".into(), loss.to_string()]);
        }
        flags
    }

    /// The emulated link these flags ask for, if any.
    pub fn link(&self) -> Option<LinkConfig> {
        if self.link_delay.is_none() && self.link_bandwidth.is_none() && self.link_loss.is_none() {
            return None;
        }
        Some(LinkConfig {
            delay: self.link_delay.unwrap_or(Duration::ZERO),
            upload_bytes_per_sec: self.link_bandwidth,
            loss: self.link_loss.unwrap_or(0.0),
        })
    }
}

/// `50ms`, `2s`, `0.1s` or `1500us`.
pub fn parse_delay(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_unit(text);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a delay like 50ms"))?;
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        _ => return Err(format!("`{text}`: the unit is one of s, ms, us")),
    };
    if !(0.0..=60.0).contains(&seconds) {
        return Err(format!("`{text}` is not a delay between 0 and 60 s"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `20mbit`, `512kbit`, `1gbit`, `2mbyte`, `100kbyte`, `2500byte`, in bytes per second.
pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let (number, unit) = split_unit(text);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a bandwidth like 20mbit"))?;
    let bytes_per_sec = match unit.to_ascii_lowercase().as_str() {
        "kbit" => value * 1e3 / 8.0,
        "mbit" => value * 1e6 / 8.0,
        "gbit" => value * 1e9 / 8.0,
        "byte" => value,
        "kbyte" => value * 1e3,
        "mbyte" => value * 1e6,
        _ => {
            return Err(format!(
                "`{text}`: the unit is one of kbit, mbit, gbit, kbyte, mbyte"
            ));
        }
    };
    if !(1.0..1e12).contains(&bytes_per_sec) {
        return Err(format!("`{text}` is not a bandwidth of at least 8 bit/s"));
    }
    Ok(bytes_per_sec as u64)
}

/// A probability in 0..1.
pub fn parse_loss(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
    if !(0.0..1.0).contains(&value) {
        return Err(format!("`{text}` is not a probability in 0..1"));
    }
    Ok(value)
}

fn split_unit(text: &str) -> (&str, &str) {
    let at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_bandwidths_and_losses_parse_with_their_units() {
        assert_eq!(parse_delay("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_delay("0.1s"), Ok(Duration::from_millis(100)));
        assert!(parse_delay("50").is_err(), "a unit is required");
        assert!(parse_delay("2min").is_err());
        assert_eq!(parse_bandwidth("20mbit"), Ok(2_500_000));
        assert_eq!(parse_bandwidth("512kbit"), Ok(64_000));
        assert_eq!(parse_bandwidth("2mbyte"), Ok(2_000_000));
        assert!(parse_bandwidth("0mbit").is_err());
        assert!(parse_bandwidth("fast").is_err());
        assert_eq!(parse_loss("0.01"), Ok(0.01));
        assert!(parse_loss("1").is_err());
    }

    #[test]
    fn no_flag_means_no_emulation() {
        assert_eq!(LinkArgs::default().link(), None);
        let args = LinkArgs {
            link_delay: Some(Duration::from_millis(50)),
            ..LinkArgs::default()
        };
        let link = args.link().expect("a link");
        assert_eq!(link.delay, Duration::from_millis(50));
        assert_eq!(link.upload_bytes_per_sec, None);
    }

    #[test]
    fn flags_read_back_to_the_same_link() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            link: LinkArgs,
        }
        let args = LinkArgs {
            link_delay: Some(Duration::from_micros(50_500)),
            link_bandwidth: Some(2_500_000),
            link_loss: Some(0.01),
        };
        let flags = args.to_flags();
        let back = Cmd::try_parse_from(std::iter::once("x".to_string()).chain(flags)).expect("parses");
        assert_eq!(back.link.link(), args.link());
    }
}

//! Judging a Nexudus answer before anything is decoded from it: is it the documented JSON (real
//! accounts answer HTML pages from a WAF or a load balancer, empty bodies and cut-off bodies
//! too), how long a throttled answer asks the client to wait, and how to show a body that was not
//! what was expected without letting it flood or forge a log line.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::Value;

/// The `Content-Type` of an answer, or a placeholder naming its absence.
pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map_or_else(
            || "no content type".to_string(),
            |v| v.chars().take(100).collect(),
        )
}

pub(super) use crate::client::is_json;

/// The start of a body as it may appear in a message: whitespace squeezed, at most 120
/// characters, control and formatting characters escaped, quoted; "an empty body" when empty.
pub(super) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 120;
    if body.iter().all(u8::is_ascii_whitespace) {
        return "an empty body".into();
    }
    let head = String::from_utf8_lossy(&body[..body.len().min(MAX * 8)]);
    let squeezed = head.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = squeezed
        .chars()
        .take(MAX)
        .collect::<String>()
        .escape_debug()
        .collect();
    if squeezed.chars().count() > MAX || body.len() > MAX * 8 {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// The wait a throttled answer's body states, if it states one: the JSON `Message` (or plain
/// text) such as `"API rate limit exceeded. Wait 1.3 seconds"`. The longest stated wait wins.
pub(super) fn body_wait(body: &[u8]) -> Option<Duration> {
    let text = String::from_utf8_lossy(&body[..body.len().min(8192)]);
    match serde_json::from_str::<Value>(&text) {
        Ok(doc) => ["Message", "message", "error_description", "error"]
            .iter()
            .filter_map(|key| doc.get(*key).and_then(Value::as_str))
            .filter_map(stated_wait)
            .max(),
        Err(_) => stated_wait(&text),
    }
}

/// "Wait 1.3 seconds", "retry in 2 s", "try again after 500 ms": a number after `wait`, `in`,
/// `after` or `for`, followed by a unit of seconds or milliseconds (glued on or as the next
/// word). The longest such wait in the text.
pub(super) fn stated_wait(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | ':' | '"'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut longest: Option<Duration> = None;
    for (i, pair) in words.windows(2).enumerate() {
        if !matches!(pair[0], "wait" | "in" | "after" | "for") {
            continue;
        }
        let word = pair[1];
        let split = word
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(word.len());
        let (number, glued) = word.split_at(split);
        let Ok(value) = number.trim_end_matches('.').parse::<f64>() else {
            continue;
        };
        let unit = if glued.is_empty() {
            words.get(i + 2).copied().unwrap_or_default()
        } else {
            glued
        };
        let unit = unit.trim_end_matches(['.', '!']);
        let seconds = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => value,
            "ms" | "millisecond" | "milliseconds" => value / 1000.0,
            _ => continue,
        };
        if let Ok(wait) = Duration::try_from_secs_f64(seconds) {
            longest = longest.max(Some(wait));
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_read_from_the_message_in_every_wording_seen() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(body_wait(br#"{"Message":"Wait 1.3 seconds"}"#), ms(1300));
        assert_eq!(
            body_wait(br#"{"Message":"API calls quota exceeded! maximum admitted 2 per 1s. Wait 0.7 seconds."}"#),
            ms(700)
        );
        assert_eq!(body_wait(b"Too many requests, retry in 2s"), ms(2000));
        assert_eq!(body_wait(b"try again after 500 ms"), ms(500));
        assert_eq!(body_wait(b"wait 1 second, or wait 3 seconds"), ms(3000));
        // Limits are not waits.
        assert_eq!(body_wait(b"120 requests per 60 seconds allowed"), None);
        assert_eq!(body_wait(br#"{"Message":"An error has occurred."}"#), None);
        assert_eq!(body_wait(b""), None);
        assert_eq!(body_wait(b"wait -1 seconds"), None);
    }

    #[test]
    fn only_json_content_types_are_json() {
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/html; charset=utf-8"));
        assert!(!is_json("no content type"));
    }

    #[test]
    fn excerpts_are_short_escaped_and_say_when_empty() {
        assert_eq!(excerpt(b"  \n"), "an empty body");
        let page = format!(
            "<html>\n  <head><title>503 Service</title>\u{202E}{}",
            "x".repeat(500)
        );
        let e = excerpt(page.as_bytes());
        assert!(
            e.starts_with("\"<html> <head><title>503 Service</title>\\u{202e}"),
            "{e}"
        );
        assert!(e.ends_with("…\""), "{e}");
        assert!(e.chars().count() < 140, "{e}");
    }
}

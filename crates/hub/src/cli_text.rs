//! Text helpers every operator command shares, in a leaf module so that
//! the commands living outside `cli.rs` (`up`) need not import the CLI
//! that dispatches to them: `--listen` parsing and control-character
//! escaping of user-supplied text.

/// `--listen`: an address with a port; a bare host gets an example that
/// names the port to add.
pub fn parse_listen(text: &str) -> std::result::Result<String, String> {
    let text = text.trim();
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_string());
    }
    if text.parse::<std::net::IpAddr>().is_ok()
        || text
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
    {
        let host = text.trim_matches(['[', ']']);
        let example = if host.contains(':') {
            format!("[{host}]:54321")
        } else {
            format!("{host}:54321")
        };
        return Err(format!(
            "{text:?} has no port: give HOST:PORT, e.g. {example}"
        ));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(text.to_string())
        }
        Some((_, port)) if port.parse::<u16>().is_err() => Err(format!(
            "{text:?}: the port {port:?} is not a number from 0 to 65535"
        )),
        _ => Err(format!(
            "{text:?} has no port: give HOST:PORT, e.g. 127.0.0.1:54321"
        )),
    }
}

/// User-supplied text with control characters escaped, so a name cannot
/// drive the terminal (colours, title, clearing the screen).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

/// [`printable`] that keeps line breaks and tabs: for multi-line text such
/// as error messages.
pub fn printable_lines(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            line.split('\t')
                .map(printable)
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

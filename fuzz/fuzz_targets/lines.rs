//! Shared by the targets that read a request from fuzz input: the first line is the peer or
//! path, each further line `name: value` is a header line (bytes kept as they are).

pub fn split(data: &[u8]) -> (&[u8], Vec<(&[u8], &[u8])>) {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let headers = lines
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let value = line[colon + 1..]
                .strip_prefix(b" ")
                .unwrap_or(&line[colon + 1..]);
            Some((&line[..colon], value))
        })
        .collect();
    (first, headers)
}

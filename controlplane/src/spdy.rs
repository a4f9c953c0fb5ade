//! The SPDY/3.1 framing that `kubectl port-forward` speaks (draft-mbelshe-httpbis-spdy-00
//! with SPDY/3.1's flow-control frame): the frames a server of that protocol reads and
//! writes, and the zlib-compressed name/value header blocks.
//!
//! Only the server's side is here, and only what port-forward uses: the client opens
//! streams (SYN_STREAM), the server answers them (SYN_REPLY) and both send DATA, RST_STREAM,
//! PING and GOAWAY. SETTINGS, HEADERS and WINDOW_UPDATE are read and ignored: the Go
//! client (moby/spdystream, which kubectl uses) sends no flow-control window updates and
//! expects none, so this side applies no windows either.
//!
//! No maintained crate speaks SPDY (it was withdrawn in favour of HTTP/2), and kubectl
//! still requires it for port-forward, tunnelled inside a WebSocket or over a plain
//! HTTP upgrade.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The largest frame this side accepts (2^24 - 1 is SPDY's own limit; a port-forward
/// client writes at most 32 KiB at a time).
pub const MAX_FRAME: usize = 1 << 24;

/// DATA and SYN flag: the sender's half of the stream ends with this frame.
pub const FLAG_FIN: u8 = 0x01;

const VERSION: u16 = 3;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_INVALID_STREAM: u32 = 2;
pub const RST_REFUSED_STREAM: u32 = 3;

/// One frame read from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    /// SETTINGS, HEADERS, WINDOW_UPDATE, SYN_REPLY from a client, and unknown types:
    /// nothing for a port-forward server to do.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY frame of version {0}; only version 3 is spoken")]
    Version(u16),
    #[error("SPDY frame of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("malformed SPDY {0} frame")]
    Malformed(&'static str),
    #[error("the SPDY header block does not decompress: {0}")]
    Compression(String),
}

/// The SPDY/3 header compression dictionary (section 2.6.10.1 of the draft): the
/// length-prefixed names and values the draft lists, then its run of status lines,
/// dates and media types. Both sides prime zlib with it.
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=",
        "iso-8859-1,utf-,*,enq=0."
    );
    let mut out = Vec::with_capacity(1423);
    for word in WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// One connection's header compression state: a zlib stream each way, as SPDY keeps one
/// per direction for the whole connection.
pub struct Codec {
    dictionary: Vec<u8>,
    inflate: Decompress,
    deflate: Compress,
}

impl Default for Codec {
    fn default() -> Self {
        let dictionary = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dictionary)
            .expect("a fresh zlib stream takes a dictionary");
        Codec {
            dictionary,
            inflate: Decompress::new(true),
            deflate,
        }
    }
}

impl Codec {
    /// Takes one whole frame off the front of `buf`, if it holds one.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if length >= MAX_FRAME {
            return Err(SpdyError::TooLarge(length));
        }
        if buf.len() < 8 + length {
            return Ok(None);
        }
        let mut head = buf.split_to(8);
        let mut body = buf.split_to(length).freeze();
        let first = head.get_u32();
        let flags = head[0];
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream: first & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: body,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        let frame = match kind {
            SYN_STREAM => {
                if body.len() < 10 {
                    return Err(SpdyError::Malformed("SYN_STREAM"));
                }
                let stream = body.get_u32() & 0x7fff_ffff;
                body.advance(6); // associated stream, priority, slot
                Frame::SynStream {
                    stream,
                    fin: flags & FLAG_FIN != 0,
                    headers: self.read_headers(&body)?,
                }
            }
            RST_STREAM => {
                if body.len() < 8 {
                    return Err(SpdyError::Malformed("RST_STREAM"));
                }
                Frame::RstStream {
                    stream: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            PING => {
                if body.len() < 4 {
                    return Err(SpdyError::Malformed("PING"));
                }
                Frame::Ping(body.get_u32())
            }
            GOAWAY => Frame::GoAway,
            HEADERS => {
                // Still run through the decompressor: its state spans the connection.
                if body.len() < 4 {
                    return Err(SpdyError::Malformed("HEADERS"));
                }
                body.advance(4);
                self.read_headers(&body)?;
                Frame::Ignored
            }
            SYN_REPLY => {
                if body.len() < 4 {
                    return Err(SpdyError::Malformed("SYN_REPLY"));
                }
                body.advance(4);
                self.read_headers(&body)?;
                Frame::Ignored
            }
            SETTINGS | WINDOW_UPDATE => Frame::Ignored,
            _ => Frame::Ignored,
        };
        Ok(Some(frame))
    }

    /// Decompresses one header block and reads its name/value pairs (a value with NULs
    /// is several values of one name).
    fn read_headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before = self.inflate.total_in();
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match result {
                Ok(Status::Ok | Status::BufError) if input.is_empty() => {
                    // All input is in; more output may still be pending.
                    if out.len() < out.capacity() {
                        break;
                    }
                }
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => self
                    .inflate
                    .set_dictionary(&self.dictionary)
                    .map(|_| ())
                    .map_err(|e| SpdyError::Compression(e.to_string()))?,
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
            if out.len() > MAX_FRAME {
                return Err(SpdyError::TooLarge(out.len()));
            }
        }
        parse_pairs(&out)
    }

    /// Compresses a header block (the connection's deflate stream, flushed).
    fn write_headers(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = BytesMut::new();
        plain.put_u32(headers.len() as u32);
        for (name, value) in headers {
            plain.put_u32(name.len() as u32);
            plain.put_slice(name.as_bytes());
            plain.put_u32(value.len() as u32);
            plain.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate of a buffer in memory cannot fail");
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }

    /// A SYN_REPLY for `stream`, with no headers.
    pub fn syn_reply(&mut self, stream: u32) -> Bytes {
        let block = self.write_headers(&[]);
        let mut body = BytesMut::with_capacity(4 + block.len());
        body.put_u32(stream & 0x7fff_ffff);
        body.put_slice(&block);
        control(SYN_REPLY, 0, &body)
    }
}

fn parse_pairs(mut plain: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let malformed = || SpdyError::Malformed("header block");
    let take = |plain: &mut &[u8]| -> Result<String, SpdyError> {
        if plain.len() < 4 {
            return Err(malformed());
        }
        let n = plain.get_u32() as usize;
        if plain.len() < n {
            return Err(malformed());
        }
        let (text, rest) = plain.split_at(n);
        *plain = rest;
        String::from_utf8(text.to_vec()).map_err(|_| malformed())
    };
    if plain.len() < 4 {
        return Err(malformed());
    }
    let count = plain.get_u32() as usize;
    let mut pairs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut plain)?.to_ascii_lowercase();
        let value = take(&mut plain)?;
        for v in value.split('\0') {
            pairs.push((name.clone(), v.to_string()));
        }
    }
    Ok(pairs)
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | body.len() as u32);
    out.put_slice(body);
    out.freeze()
}

/// A DATA frame (at most [`MAX_FRAME`] - 1 bytes of `data`).
pub fn data(stream: u32, fin: bool, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + data.len());
    out.put_u32(stream & 0x7fff_ffff);
    out.put_u32(((if fin { FLAG_FIN } else { 0 } as u32) << 24) | data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

pub fn rst_stream(stream: u32, status: u32) -> Bytes {
    let mut body = BytesMut::with_capacity(8);
    body.put_u32(stream & 0x7fff_ffff);
    body.put_u32(status);
    control(RST_STREAM, 0, &body)
}

pub fn ping(id: u32) -> Bytes {
    control(PING, 0, &id.to_be_bytes())
}

pub fn goaway(last_stream: u32) -> Bytes {
    let mut body = BytesMut::with_capacity(8);
    body.put_u32(last_stream & 0x7fff_ffff);
    body.put_u32(0);
    control(GOAWAY, 0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's side, for the tests: the same framing the other way round.
    fn syn_stream(codec: &mut Codec, stream: u32, headers: &[(&str, &str)]) -> Bytes {
        let block = codec.write_headers(headers);
        let mut body = BytesMut::new();
        body.put_u32(stream);
        body.put_u32(0);
        body.put_u16(0);
        body.put_slice(&block);
        control(SYN_STREAM, 0, &body)
    }

    #[test]
    fn the_dictionary_is_the_drafts() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn frames_round_trip_with_compressed_headers_across_a_connection() {
        let (mut client, mut server) = (Codec::default(), Codec::default());
        let mut wire = BytesMut::new();
        for (stream, kind) in [(1, "error"), (3, "data")] {
            wire.extend_from_slice(&syn_stream(
                &mut client,
                stream,
                &[("streamType", kind), ("port", "8080"), ("requestID", "0")],
            ));
        }
        wire.extend_from_slice(&data(3, true, b"GET / HTTP/1.1\r\n\r\n"));
        wire.extend_from_slice(&ping(7));
        // Byte by byte: a frame is only parsed once all of it is there.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = server.parse(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 4);
        assert_eq!(
            frames[1],
            Frame::SynStream {
                stream: 3,
                fin: false,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into()),
                ],
            }
        );
        assert_eq!(
            frames[2],
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")
            }
        );
        assert_eq!(frames[3], Frame::Ping(7));
        // The server's replies read back on the client's side.
        let mut back = BytesMut::from(&server.syn_reply(3)[..]);
        assert_eq!(client.parse(&mut back).unwrap(), Some(Frame::Ignored));
        assert!(back.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut codec = Codec::default();
        let mut wrong_version = BytesMut::from(&control(PING, 0, &[0, 0, 0, 1])[..]);
        wrong_version[1] = 2;
        assert!(matches!(
            codec.parse(&mut wrong_version),
            Err(SpdyError::Version(2))
        ));
        let mut short = BytesMut::from(&control(SYN_STREAM, 0, &[0, 0, 0, 1])[..]);
        assert!(codec.parse(&mut short).is_err());
        let mut bad_block = BytesMut::from(
            &control(SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])[..],
        );
        assert!(matches!(
            Codec::default().parse(&mut bad_block),
            Err(SpdyError::Compression(_))
        ));
    }
}

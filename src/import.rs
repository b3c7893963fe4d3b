//! `mailpipe import fail2ban`: a fail2ban configuration as a pipeline (being written).

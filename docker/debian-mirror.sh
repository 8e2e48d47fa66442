# debian-mirror.sh: the Debian mirror this machine's apt already uses (sourced by bootstrap-base.sh).
#
#   source docker/debian-mirror.sh
#   apt_deb_sources [ROOT]          # "URI SUITE" per enabled `deb` source under ROOT/etc/apt, in apt's order
#   debian_mirror [ROOT]            # the first such URI of a suite that is not a security suite
#   debian_security_mirror [ROOT]   # the first URI of a security suite (SUITE-security, or SUITE/updates)
#   is_debian [ROOT]                # whether ROOT/etc/os-release says Debian (a derivative's mirror,
#                                   # Ubuntu's say, holds no Debian suites)
#
# ROOT defaults to / (tests point it at a temporary tree). The sources are /etc/apt/sources.list and
# /etc/apt/sources.list.d/*.list (one-line format) and /etc/apt/sources.list.d/*.sources (deb822:
# Types/URIs/Suites stanzas, `Enabled: no` honoured). Only http, https and file URIs count: they are the
# ones debootstrap can read. A function that finds nothing prints nothing and returns 1.
# Defines functions only: sourcing it changes nothing else.

# One-line files: `deb [options] URI SUITE COMPONENTS...`; the options may hold spaces inside [ ].
_apt_one_line_sources() {
    awk '
        /^[ \t]*#/ || NF == 0 { next }
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if (i + 1 <= NF) print $i, $(i + 1)
        }' "$@"
}

# deb822 files: blank lines end a stanza, field names are case-insensitive, indented lines continue the
# previous field (an embedded Signed-By key is such a block and is skipped with its field).
_apt_deb822_sources() {
    awk '
        function flush(   n, m, i, j, t, U, S, T, isdeb) {
            n = split(types, T, " "); isdeb = 0
            for (t = 1; t <= n; t++) if (T[t] == "deb") isdeb = 1
            if (isdeb && tolower(enabled) != "no") {
                n = split(uris, U, " "); m = split(suites, S, " ")
                for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print U[i], S[j]
            }
            types = uris = suites = enabled = field = ""
        }
        FNR == 1 { flush() }
        /^#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/ {
            if (field == "types") types = types " " $0
            else if (field == "uris") uris = uris " " $0
            else if (field == "suites") suites = suites " " $0
            next
        }
        {
            colon = index($0, ":"); field = tolower(substr($0, 1, colon - 1)); value = substr($0, colon + 1)
            if (field == "types") types = value
            else if (field == "uris") uris = value
            else if (field == "suites") suites = value
            else if (field == "enabled") { enabled = value; gsub(/[ \t]/, "", enabled) }
        }
        END { flush() }' "$@"
}

apt_deb_sources() {
    local root=${1:-/} file
    local apt="${root%/}/etc/apt"
    [ -f "$apt/sources.list" ] && _apt_one_line_sources "$apt/sources.list"
    for file in "$apt"/sources.list.d/*; do  # apt reads this folder in name order, both formats mixed
        case "$file" in
            *.list) [ -f "$file" ] && _apt_one_line_sources "$file" ;;
            *.sources) [ -f "$file" ] && _apt_deb822_sources "$file" ;;
        esac
    done
    return 0
}

# $1: root; $2: 1 for security suites, 0 for the others.
_apt_first_uri() {
    apt_deb_sources "$1" | awk -v want="$2" '
        $1 !~ /^(https?:\/\/|file:\/)/ { next }
        { security = ($2 ~ /-security$/ || $2 ~ /\/updates$/) }
        security == want && !found { uri = $1; sub(/\/+$/, "", uri); print uri; found = 1 }
        END { exit !found }'  # reads to the end: an early exit could fail the pipe under pipefail
}

debian_mirror() { _apt_first_uri "${1:-/}" 0; }
debian_security_mirror() { _apt_first_uri "${1:-/}" 1; }

is_debian() { [ "$(. "${1:-/}/etc/os-release" 2>/dev/null && echo "${ID:-}")" = debian ]; }

#!/usr/bin/env bash
# build-image.sh: build the prunebench image that fits this machine.
#
#   docker/build-image.sh [cpu|cuda|auto]      (default auto: cuda when `nvidia-smi` works, else cpu)
#
# Tags prunebench:cpu or prunebench:cuda (override with IMAGE_TAG) and prints, as the LAST line of
# stdout:  <tag> <image id> <size in bytes> <repo digest or "-">   (build log goes to stderr).
#
# Environment:
#   BASE                 cpu only: base image (any Debian-based one with python3.11, e.g. debian:bookworm-slim
#                        where a registry is reachable). Unset: the Dockerfile's default, the registry-free
#                        prunebench/debian-bookworm tag, bootstrapped by bootstrap-base.sh when missing.
#   TORCH_CPU_WHEEL_DIR  cpu only: where torch-<ver>+cpu-*.whl lies (default: pip's find-links, /opt/wheels);
#                        if no wheel is found, pip downloads it from the indexes this machine's pip is set up
#                        with (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, pip.conf) or from TORCH_CPU_INDEX_URL.
#   TORCH_CPU_INDEX_URL  cpu only: PyTorch's CPU wheel index, for that download (no host is written here)
#   PRUNEBENCH_DOCKER_CONTEXT  staging directory for build contexts (default docker/.build, git-ignored)
#   IMAGE_TAG            tag to give the image (default prunebench:<kind>)
#   DOCKER_BUILD_ARGS    extra arguments for the build command (e.g. "--no-cache --pull")
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
say() { echo "build-image: $*" >&2; }
die() { echo "build-image: ERROR: $*" >&2; exit 1; }

KIND=${1:-auto}
case "$KIND" in
    auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then KIND=cuda; else KIND=cpu; fi
          say "auto: building the $KIND image" ;;
    cpu | cuda) ;;
    *) die "usage: $0 [cpu|cuda|auto]" ;;
esac
TAG=${IMAGE_TAG:-prunebench:$KIND}

if ! docker info >/dev/null 2>&1; then
    "$HERE/ensure-engine.sh" || exit 1
fi

# ------------------------------------------------------------------ context ---
CTX_ROOT=${PRUNEBENCH_DOCKER_CONTEXT:-$HERE/.build}
CTX=$CTX_ROOT/$KIND
mkdir -p "$CTX"
exec 9>"$CTX_ROOT/.$KIND.lock"
flock 9 # one build per kind at a time: the staged context is shared

# Only when the content changed; wheels are hard-linked when on the same file system (free).
place() { # src dst
    if [ -e "$2" ] && cmp -s "$1" "$2"; then return 0; fi
    rm -f "$2"
    case "$1" in
        *.whl) ln "$1" "$2" 2>/dev/null || cp "$1" "$2" ;;
        *) cp "$1" "$2" ;;
    esac
}

# The host's CA bundle: pip inside the build must trust what the host trusts (TLS-intercepting
# proxies, corporate CAs).
mkdir -p "$CTX/certs"
CA=""
for c in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
    if [ -n "$c" ] && [ -s "$c" ]; then CA=$c; break; fi
done
[ -n "$CA" ] || die "no CA bundle found on this host (set PIP_CERT=/path/to/bundle.pem)"
cp "$CA" "$CTX/certs/ca-certificates.crt.new" && mv -f "$CTX/certs/ca-certificates.crt.new" "$CTX/certs/ca-certificates.crt"

# The project source, without caches and build leftovers.
rm -rf "$CTX/src" && mkdir -p "$CTX/src"
src_items=(pyproject.toml harness methods)
for f in README.md README.rst LICENSE LICENSE.txt setup.cfg; do [ -e "$REPO/$f" ] && src_items+=("$f"); done
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' --exclude=build \
    -cf - "${src_items[@]}" | tar -C "$CTX/src" -xf -

BUILD_ARGS=()
# The commit (and whether the tree had uncommitted changes) goes into the image's environment.
COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$COMMIT" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT-dirty"
fi
BUILD_ARGS+=(--build-arg "GIT_COMMIT=$COMMIT")
if [ "$KIND" = cpu ]; then
    place "$REPO/requirements.lock" "$CTX/requirements.lock"
    TORCH_VERSION=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$REPO/requirements.lock")
    [ -n "$TORCH_VERSION" ] || die "no torch==<version> pin in requirements.lock"
    BUILD_ARGS+=(--build-arg "TORCH_VERSION=$TORCH_VERSION")

    # The CPU torch wheel goes into the context: in the container pip sees only PyPI, where
    # torch==$TORCH_VERSION is the multi-GB CUDA build.
    mkdir -p "$CTX/wheels"
    dirs=()
    if [ -n "${TORCH_CPU_WHEEL_DIR:-}" ]; then dirs+=("$TORCH_CPU_WHEEL_DIR"); fi
    # pip's find-links (config and environment: space-separated lists), then the usual place
    read -ra more <<<"$(pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-} /opt/wheels"
    dirs+=("${more[@]}")
    found=0
    for d in "${dirs[@]}"; do
        d=${d#file://}
        [ -d "$d" ] || continue
        for w in "$d"/torch-"$TORCH_VERSION"+cpu-*.whl; do
            [ -f "$w" ] || continue
            place "$w" "$CTX/wheels/$(basename "$w")"; found=1
        done
        if [ "$found" = 1 ]; then say "torch CPU wheel(s) from $d"; break; fi
    done
    # stale wheels of other torch versions would only bloat the context
    for w in "$CTX"/wheels/*.whl; do
        case "$(basename "$w")" in torch-"$TORCH_VERSION"+cpu-*) ;; *) rm -f "$w" ;; esac
    done
    if [ "$found" = 0 ] && ! ls "$CTX"/wheels/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
        index=()
        [ -z "${TORCH_CPU_INDEX_URL:-}" ] || index=(--extra-index-url "$TORCH_CPU_INDEX_URL")
        say "no local torch-$TORCH_VERSION+cpu wheel: downloading it (cp311, for a bookworm base) from pip's indexes${TORCH_CPU_INDEX_URL:+ and $TORCH_CPU_INDEX_URL}"
        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.11 \
            --platform manylinux_2_28_x86_64 ${index[@]+"${index[@]}"} \
            -d "$CTX/wheels" "torch==$TORCH_VERSION+cpu" >&2 \
            || die "no torch-$TORCH_VERSION+cpu wheel: set TORCH_CPU_WHEEL_DIR, or TORCH_CPU_INDEX_URL to PyTorch's CPU wheel index"
    fi

    if [ -n "${BASE:-}" ]; then
        BUILD_ARGS+=(--build-arg "BASE=$BASE")
    else
        DEFAULT_BASE=$(sed -n 's/^ARG BASE=\(.*\)$/\1/p' "$HERE/Dockerfile.cpu" | head -n 1)
        if ! docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1; then
            say "base $DEFAULT_BASE missing: bootstrapping it (debootstrap, about a minute)"
            "$HERE/bootstrap-base.sh" "$DEFAULT_BASE" >&2
        fi
    fi
else
    place "$HERE/requirements.cuda.txt" "$CTX/requirements.cuda.txt"
    rm -rf "$CTX/wheels"
fi
place "$HERE/requirements.data.txt" "$CTX/requirements.data.txt"
cp "$HERE/Dockerfile.$KIND" "$CTX/Dockerfile"

# ------------------------------------------------------------------- build ---
# BuildKit when the buildx plugin is there (user machines); else the legacy builder, which is all
# Debian bookworm's docker.io 20.10 offers (a Docker >= 23 CLI without buildx refuses BuildKit).
if docker buildx version >/dev/null 2>&1; then
    BUILD=(docker buildx build --load)
else
    export DOCKER_BUILDKIT=0
    BUILD=(docker build)
fi
old_id=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
say "${BUILD[*]} -t $TAG ${BUILD_ARGS[*]} $CTX"
# shellcheck disable=SC2086
"${BUILD[@]}" -t "$TAG" "${BUILD_ARGS[@]}" ${DOCKER_BUILD_ARGS:-} "$CTX" >&2 \
    2> >(grep -v -E '^(DEPRECATED: The legacy builder| +(BuildKit is currently disabled|environment-variable\.|Install the buildx|https://docs\.docker\.com/go/buildx))' >&2) \
    || die "docker build failed"

id=$(docker image inspect -f '{{.Id}}' "$TAG")
# The image this tag pointed to before is now untagged: drop it, or every dependency change would
# leave a ~2 GB venv layer behind (the legacy builder's cache images stay untouched).
if [ -n "$old_id" ] && [ "$old_id" != "$id" ] && [ -z "$(docker image inspect -f '{{join .RepoTags ""}}' "$old_id" 2>/dev/null)" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi
size=$(docker image inspect -f '{{.Size}}' "$TAG")
digest=$(docker image inspect -f '{{range .RepoDigests}}{{.}} {{end}}' "$TAG" | awk '{print $1}')
say "built $TAG: id $id, $(awk -v s="$size" 'BEGIN{printf "%.2f GB", s/1e9}') (repo digest: ${digest:-none, not pushed})"
echo "$TAG $id $size ${digest:--}"

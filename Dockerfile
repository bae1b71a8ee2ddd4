# negcache as an OCI image: one layer holding /plugin.wasm, the layout Istio's WasmPlugin
# reads from `url: oci://REGISTRY/negcache:TAG`.
#
#   make build
#   docker build -t REGISTRY/negcache:0.1.0 .     # or: podman build
#   docker push REGISTRY/negcache:0.1.0
#
# .dockerignore keeps the build context to the filter alone.
FROM scratch
COPY target/negcache.wasm /plugin.wasm

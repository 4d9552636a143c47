// Stand-in for deno_net's TLS helpers, which deno_fetch's HTTP client module
// loads at its top level. Workers cannot configure client certificates, so
// the only caller (Deno.createHttpClient) never exists here.
(function () {
function loadTlsKeyPair() {
  throw new TypeError("client certificates are not available to workers");
}
return { loadTlsKeyPair };
})();

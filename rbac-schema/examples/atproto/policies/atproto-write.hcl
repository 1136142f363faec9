path "/xrpc/com.atproto.repo.createRecord" {
  capabilities = ["create"]
}

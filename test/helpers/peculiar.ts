// @peculiar/x509, the independent full-ASN.1 oracle our fast path is cross-checked against.
// Its tsyringe dependency needs the Reflect metadata API before it loads; ESM evaluates imports in
// order, so the polyfill import must stay first.
import "reflect-metadata";

export * as x509 from "@peculiar/x509";

// TokenReviewer backed by the Kubernetes API: POST authentication.k8s.io/v1 TokenReviews.

import type { TokenReviewer, TokenReviewStatus } from "../token-review.js";
import { type KubeClient, TOKEN_REVIEWS } from "./client.js";

export class KubeTokenReviewer implements TokenReviewer {
  constructor(private readonly client: Pick<KubeClient, "create">) {}

  async review(
    token: string,
    audiences: readonly string[],
    signal?: AbortSignal,
  ): Promise<TokenReviewStatus> {
    const review = await this.client.create(
      TOKEN_REVIEWS,
      {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenReview",
        metadata: {},
        spec: { token, audiences: [...audiences] },
      },
      // A TokenReview creates nothing, so repeating one after a lost response is harmless.
      { signal, idempotent: true },
    );
    return review.status ?? {};
  }
}

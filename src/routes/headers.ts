// Headers every successful authenticated response carries (components registered in app.ts).
export const OK_HEADERS = {
  "x-request-id": { $ref: "#/components/headers/RequestId" },
  "x-ratelimit-limit-requests": { $ref: "#/components/headers/RateLimitLimit" },
  "x-ratelimit-remaining-requests": { $ref: "#/components/headers/RateLimitRemaining" },
  "x-ratelimit-reset-requests": { $ref: "#/components/headers/RateLimitReset" },
};

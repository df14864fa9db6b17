/*
 * seal.h - AES-128-GCM seal/open of a page or sub-page, header-only, over OpenSSL's EVP API.
 *
 * Neutral (eleos_shim/): the enclave's SUVM (trusted/_native/suvm.c) seals the pages it writes
 * back to its untrusted backing store, and the modeled SGX driver (untrusted/_native/epc*.c)
 * seals EPC pages on EWB and opens them on ELDU, as the CPU's MEE-derived paging key would.
 * Both include this one file so that "sealed" means the same thing everywhere.
 *
 * Contract:
 *   eleos_seal(key, nonce, aad, aadlen, in, n, out, tag)  -> 0, or -1 if libcrypto failed
 *   eleos_open(key, nonce, aad, aadlen, in, n, out, tag)  -> 0, or -1 if the tag does not
 *       verify (tampered ciphertext, wrong nonce, wrong AAD: swapped or replayed page).
 *   `in` and `out` may be the same buffer (in-place).  On -1 from eleos_open the contents of
 *   `out` are unspecified: the caller must not use them (fail-stop, like InvalidTag).
 *   The output is exactly what pyca/cryptography's AESGCM(key).encrypt(nonce, data, aad)
 *   returns, split as ciphertext (n bytes) and tag (16 bytes); tests check this.
 *
 * Freshness is the caller's job: never seal twice under one key with the same nonce.  The
 * helper eleos_nonce() builds the 96-bit deterministic nonce of NIST SP 800-38D 8.2.1
 * (a 32-bit fixed field naming the sealer + a 64-bit invocation counter), which is unique as
 * long as the counter never repeats; the AAD should bind where the data lives (page number)
 * and its version, so that swapped and replayed pages fail the tag check.
 *
 * Speed: one EVP_CIPHER_CTX per thread and direction, created on first use and freed when
 * the thread exits (pthread key destructor); the AES key schedule is redone only when the
 * key changes.  With AES-NI a 4 KiB page seals or opens in ~1-3 us.  Each translation unit
 * that includes this header gets its own contexts (static), which is harmless.
 */
#ifndef ELEOS_SEAL_H
#define ELEOS_SEAL_H

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <openssl/evp.h>
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#include <openssl/core_names.h>
#include <openssl/params.h>
#endif

#define ELEOS_SEAL_KEY_BYTES   16
#define ELEOS_SEAL_NONCE_BYTES 12
#define ELEOS_SEAL_TAG_BYTES   16

/* Per-thread state: one context per direction, with the key it was last keyed with. */
struct eleos_seal_tls {
    EVP_CIPHER_CTX *ctx[2];            /* [0] seal (encrypt), [1] open (decrypt) */
    uint8_t key[2][ELEOS_SEAL_KEY_BYTES];
    int keyed[2];
};

static pthread_key_t eleos_seal_key;
static pthread_once_t eleos_seal_once = PTHREAD_ONCE_INIT;
static __thread struct eleos_seal_tls *eleos_seal_tls_ptr;

static void eleos_seal_tls_free(void *p)
{
    struct eleos_seal_tls *t = (struct eleos_seal_tls *)p;
    if (!t)
        return;
    for (int i = 0; i < 2; i++)
        if (t->ctx[i])
            EVP_CIPHER_CTX_free(t->ctx[i]);
    OPENSSL_cleanse(t->key, sizeof t->key);    /* key material must not outlive the thread */
    OPENSSL_free(t);
}

static void eleos_seal_make_key(void) { (void)pthread_key_create(&eleos_seal_key, eleos_seal_tls_free); }

static EVP_CIPHER_CTX *eleos_seal_ctx(int dir, const uint8_t key[ELEOS_SEAL_KEY_BYTES],
                                      const uint8_t nonce[ELEOS_SEAL_NONCE_BYTES])
{
    struct eleos_seal_tls *t = eleos_seal_tls_ptr;
    if (!t) {
        pthread_once(&eleos_seal_once, eleos_seal_make_key);
        t = (struct eleos_seal_tls *)OPENSSL_zalloc(sizeof *t);
        if (!t)
            return NULL;
        eleos_seal_tls_ptr = t;
        (void)pthread_setspecific(eleos_seal_key, t);
    }
    if (!t->ctx[dir]) {
        t->ctx[dir] = EVP_CIPHER_CTX_new();
        if (!t->ctx[dir])
            return NULL;
        /* Fix the cipher once; the default 12-byte IV length is the one we use. */
        int ok = dir == 0 ? EVP_EncryptInit_ex(t->ctx[dir], EVP_aes_128_gcm(), NULL, NULL, NULL)
                          : EVP_DecryptInit_ex(t->ctx[dir], EVP_aes_128_gcm(), NULL, NULL, NULL);
        if (ok != 1) {
            EVP_CIPHER_CTX_free(t->ctx[dir]);
            t->ctx[dir] = NULL;
            return NULL;
        }
        t->keyed[dir] = 0;
    }
    EVP_CIPHER_CTX *c = t->ctx[dir];
    /* Re-expanding the AES key costs about as much as sealing 256 bytes: skip it if unchanged. */
    const uint8_t *k = NULL;
    if (!t->keyed[dir] || memcmp(t->key[dir], key, ELEOS_SEAL_KEY_BYTES) != 0) {
        memcpy(t->key[dir], key, ELEOS_SEAL_KEY_BYTES);
        t->keyed[dir] = 1;
        k = key;
    }
    int ok = dir == 0 ? EVP_EncryptInit_ex(c, NULL, NULL, k, nonce)
                      : EVP_DecryptInit_ex(c, NULL, NULL, k, nonce);
    if (ok != 1) {
        t->keyed[dir] = 0;
        return NULL;
    }
    return c;
}

/* Encrypt n bytes of `in` into `out` (may alias) and write the 16-byte tag.  0 / -1. */
static inline int eleos_seal(const uint8_t key[ELEOS_SEAL_KEY_BYTES],
                             const uint8_t nonce[ELEOS_SEAL_NONCE_BYTES],
                             const void *aad, size_t aadlen,
                             const void *in, size_t n, void *out,
                             uint8_t tag[ELEOS_SEAL_TAG_BYTES])
{
    int len;
    if (n > INT_MAX || aadlen > INT_MAX)
        return -1;
    EVP_CIPHER_CTX *c = eleos_seal_ctx(0, key, nonce);
    if (!c)
        return -1;
    if (aadlen && EVP_EncryptUpdate(c, NULL, &len, (const unsigned char *)aad, (int)aadlen) != 1)
        return -1;
    if (n && EVP_EncryptUpdate(c, (unsigned char *)out, &len, (const unsigned char *)in, (int)n) != 1)
        return -1;
    if (EVP_EncryptFinal_ex(c, (unsigned char *)out + n, &len) != 1)
        return -1;
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    /* OpenSSL 3: the params call skips the ctrl -> params translation (~0.1 us a call). */
    OSSL_PARAM p[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag,
                                                         ELEOS_SEAL_TAG_BYTES),
                       OSSL_PARAM_construct_end()};
    if (EVP_CIPHER_CTX_get_params(c, p) != 1)
        return -1;
#else
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, ELEOS_SEAL_TAG_BYTES, tag) != 1)
        return -1;
#endif
    return 0;
}

/* Decrypt and verify.  0 if the tag verifies, -1 otherwise (then `out` must not be used). */
static inline int eleos_open(const uint8_t key[ELEOS_SEAL_KEY_BYTES],
                             const uint8_t nonce[ELEOS_SEAL_NONCE_BYTES],
                             const void *aad, size_t aadlen,
                             const void *in, size_t n, void *out,
                             const uint8_t tag[ELEOS_SEAL_TAG_BYTES])
{
    int len;
    if (n > INT_MAX || aadlen > INT_MAX)
        return -1;
    EVP_CIPHER_CTX *c = eleos_seal_ctx(1, key, nonce);
    if (!c)
        return -1;
    if (aadlen && EVP_DecryptUpdate(c, NULL, &len, (const unsigned char *)aad, (int)aadlen) != 1)
        return -1;
    if (n && EVP_DecryptUpdate(c, (unsigned char *)out, &len, (const unsigned char *)in, (int)n) != 1)
        return -1;
    /* Both calls take a non-const pointer but only read the expected tag. */
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    OSSL_PARAM p[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)tag,
                                                         ELEOS_SEAL_TAG_BYTES),
                       OSSL_PARAM_construct_end()};
    if (EVP_CIPHER_CTX_set_params(c, p) != 1)
        return -1;
#else
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, ELEOS_SEAL_TAG_BYTES, (void *)tag) != 1)
        return -1;
#endif
    if (EVP_DecryptFinal_ex(c, (unsigned char *)out + n, &len) != 1)
        return -1;
    return 0;
}

/* The deterministic 96-bit nonce: fixed field (names the sealer) || 64-bit counter, both
 * little-endian.  Unique per key as long as (fixed, counter) never repeats. */
static inline void eleos_nonce(uint8_t nonce[ELEOS_SEAL_NONCE_BYTES], uint32_t fixed, uint64_t counter)
{
    for (int i = 0; i < 4; i++)
        nonce[i] = (uint8_t)(fixed >> (8 * i));
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(counter >> (8 * i));
}

#endif

// llama_compare_greedy.cpp — greedy continuation of a prompt of token ids with
// llama.cpp's C API, for the token check of bench/llama_compare.sh (the GGUF
// of the `small` preset has no tokenizer, so llama-simple/llama-cli, which
// take text, cannot be used). Built by that script against the static
// libraries of its llama.cpp build.
//   llama_compare_greedy MODEL.gguf N_NEW THREADS ID ID ...
// Prints {"output_ids": [...], "logprobs": [...]} on stdout: N_NEW tokens, each
// the argmax of the last position's logits, fed back one at a time.
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char ** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s MODEL.gguf N_NEW THREADS ID...\n", argv[0]);
        return 2;
    }
    const int n_new = std::atoi(argv[2]);
    const int threads = std::atoi(argv[3]);
    std::vector<llama_token> prompt;
    for (int i = 4; i < argc; i++) prompt.push_back((llama_token) std::atoi(argv[i]));

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) (prompt.size() + n_new + 16);
    cp.n_batch = cp.n_ctx;
    cp.n_threads = cp.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    std::vector<llama_token> out;
    std::vector<double> lps;
    llama_batch batch = llama_batch_get_one(prompt.data(), (int32_t) prompt.size());
    llama_token tok = 0;
    for (int step = 0; step < n_new; step++) {
        if (llama_decode(ctx, batch) != 0) {
            std::fprintf(stderr, "llama_decode failed at step %d\n", step);
            return 1;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        int best = 0;
        for (int v = 1; v < n_vocab; v++)
            if (logits[v] > logits[best]) best = v;
        double sum = 0.0;  // log-softmax of the chosen token, to compare with dpep's logprobs
        for (int v = 0; v < n_vocab; v++) sum += std::exp((double) logits[v] - logits[best]);
        lps.push_back(-std::log(sum));
        out.push_back(best);
        tok = best;
        batch = llama_batch_get_one(&tok, 1);
    }
    std::printf("{\"output_ids\": [");
    for (size_t i = 0; i < out.size(); i++) std::printf("%s%d", i ? ", " : "", out[i]);
    std::printf("], \"logprobs\": [");
    for (size_t i = 0; i < lps.size(); i++) std::printf("%s%.7g", i ? ", " : "", lps[i]);
    std::printf("]}\n");
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}

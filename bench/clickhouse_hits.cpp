#include "clickhouse_hits.h"

#include <fmt/format.h>

#include <algorithm>

namespace liveio::bench::hits {

std::string create_table_sql(const std::string& table) {
    // ClickBench's column order, its SQL types in ClickHouse's names (BIGINT = Int64,
    // INTEGER = Int32, SMALLINT = Int16, TEXT = String, TIMESTAMP = DateTime) and its primary
    // key; only the columns its queries read.
    return fmt::format(R"sql(CREATE TABLE {} (
    WatchID Int64, Title String, EventTime DateTime, EventDate Date, CounterID Int32,
    ClientIP Int32, RegionID Int32, UserID Int64, URL String, Referer String, IsRefresh Int16,
    ResolutionWidth Int16, MobilePhone Int16, MobilePhoneModel String, SearchEngineID Int16,
    SearchPhrase String, AdvEngineID Int16, WindowClientWidth Int16, WindowClientHeight Int16,
    IsLink Int16, IsDownload Int16, DontCountHits Int16, TraficSourceID Int16,
    RefererHash Int64, URLHash Int64
) ENGINE = MergeTree() ORDER BY (CounterID, EventDate, UserID, EventTime, WatchID)
SETTINGS index_granularity = 8192)sql",
                       table);
}

namespace {

// The Russian words of the generator (`rwords` there), percent-encoded as they appear in
// search engines' Referer URLs.
std::string encoded_words_array() {
    static constexpr const char* kWords[] = {
        "новости",  "погода",     "кино",    "авто",     "спорт",  "игры",        "музыка",
        "фото",     "видео",      "дом",     "здоровье", "работа", "деньги",      "туризм",
        "рецепты",  "мода",       "техника", "наука",    "дети",   "книги",       "стройка",
        "сад",      "рыбалка",    "охота",   "кредит",   "банк",   "телефон",     "ноутбук",
        "купить",   "продам",     "отзывы",  "форум",    "блог",   "карта",       "поиск",
        "скачать",  "бесплатно",  "онлайн",  "смотреть", "сериал", "фильм",       "анекдот",
        "гороскоп", "знакомства", "игрушки", "мебель",   "ремонт", "недвижимость"};
    std::string out = "[";
    for (const char* word : kWords) {
        if (out.size() > 1) out += ", ";
        out += '\'';
        for (const char* c = word; *c; ++c)
            out += fmt::format("%{:02X}", static_cast<unsigned char>(*c));
        out += '\'';
    }
    return out + "]";
}

}  // namespace

std::string insert_batch_sql(const std::string& table, uint64_t first, uint64_t count,
                             uint64_t total_rows) {
    // Row n draws its values from hashes of n: h1..h7 give independent uniform numbers (u*,
    // 32 or 16 bits each). Values that belong to a user (region, screen, phone, usual IP) come
    // from hashes of the user's rank, values that belong to a page (path, title) from hashes
    // of (counter, page rank), so repeated pages and users repeat their strings as in real
    // logs. Ranks drawn as floor(exp(u * log(K))) are log-uniform: rank r has probability
    // ~ 1/r (CounterID 62 is rank 1: ~7% of rows; ~50 counters exceed 0.2%).
    const uint64_t users = std::max<uint64_t>(total_rows / 5, 1000);
    return fmt::format(R"sql(INSERT INTO {table}
SELECT WatchID, Title, EventTime, EventDate, CounterID, ClientIP, RegionID, UserID, URL, Referer,
       IsRefresh, ResolutionWidth, MobilePhone, MobilePhoneModel, SearchEngineID, SearchPhrase,
       AdvEngineID, WindowClientWidth, WindowClientHeight, IsLink, IsDownload, DontCountHits,
       TraficSourceID, RefererHash, URLHash
FROM (
SELECT
    number + {first} AS n,
    intDiv(n, 4) AS visit, n % 4 AS hit,
    intHash64(visit * 8 + 1) AS h1, intHash64(n * 8 + 2) AS h2, intHash64(visit * 8 + 3) AS h3,
    intHash64(visit * 8 + 4) AS h4, intHash64(n * 8 + 5) AS h5, intHash64(n * 8 + 6) AS h6,
    intHash64(visit * 8 + 5) AS hv, intHash64((n - 1) * 8 + 2) AS h2_prev,
    bitAnd(h1, 4294967295) / 4294967296. AS u_counter, bitShiftRight(h1, 32) / 4294967296. AS u_user,
    bitAnd(hv, 4294967295) / 4294967296. AS u_time, bitShiftRight(h2, 32) / 4294967296. AS u_page,
    bitShiftRight(h2_prev, 32) / 4294967296. AS u_prev_page,
    bitAnd(h3, 4294967295) / 4294967296. AS u_phrase, bitShiftRight(h3, 32) / 4294967296. AS u_ref,
    bitAnd(h4, 65535) / 65536. AS u_heavy, bitAnd(bitShiftRight(h4, 16), 65535) / 65536. AS u_search,
    bitAnd(bitShiftRight(h4, 32), 65535) / 65536. AS u_params, bitShiftRight(h4, 48) / 65536. AS u_ip,
    bitAnd(h5, 65535) / 65536. AS u_engine, bitAnd(bitShiftRight(h5, 16), 65535) / 65536. AS u_adv,
    bitAnd(bitShiftRight(h5, 32), 65535) / 65536. AS u_source, bitShiftRight(h5, 48) / 65536. AS u_refresh,
    bitAnd(h6, 65535) / 65536. AS u_dontcount, bitAnd(bitShiftRight(h6, 16), 65535) / 65536. AS u_link,

    ['novosti', 'pogoda', 'kino', 'avto', 'sport', 'igry', 'muzyka', 'foto', 'video', 'dom',
     'zdorovie', 'rabota', 'dengi', 'turizm', 'recepty', 'moda', 'tehnika', 'nauka', 'deti', 'knigi',
     'stroika', 'sad', 'ribalka', 'ohota', 'kredit', 'bank', 'telefon', 'noutbuk', 'kupit', 'prodam',
     'otzyvy', 'forum', 'blog', 'karta', 'poisk', 'skachat', 'besplatno', 'onlain', 'smotret', 'serial',
     'film', 'anekdot', 'goroskop', 'znakomstva', 'igrushki', 'mebel', 'remont', 'nedvizhimost'] AS words,
    ['новости', 'погода', 'кино', 'авто', 'спорт', 'игры', 'музыка', 'фото', 'видео', 'дом',
     'здоровье', 'работа', 'деньги', 'туризм', 'рецепты', 'мода', 'техника', 'наука', 'дети', 'книги',
     'стройка', 'сад', 'рыбалка', 'охота', 'кредит', 'банк', 'телефон', 'ноутбук', 'купить', 'продам',
     'отзывы', 'форум', 'блог', 'карта', 'поиск', 'скачать', 'бесплатно', 'онлайн', 'смотреть', 'сериал',
     'фильм', 'анекдот', 'гороскоп', 'знакомства', 'игрушки', 'мебель', 'ремонт', 'недвижимость'] AS rwords,
    {rwords_encoded} AS rwords_encoded,
    ['market', 'auto', 'kino', 'news', 'mail', 'sport', 'games', 'photo', 'video', 'home',
     'health', 'job', 'money', 'travel', 'food', 'style', 'tech', 'science', 'kids', 'books',
     'build', 'garden', 'fish', 'hunt', 'credit', 'bank', 'phone', 'shop', 'buy', 'sell',
     'review', 'forum', 'blog', 'map', 'search', 'soft', 'free', 'online', 'tv', 'radio'] AS site1,
    ['ru', 'portal', 'online', 'info', 'club', 'city', 'land', 'world', 'center', 'zone',
     'plus', 'pro', 'base', 'net', 'hub', 'time', 'life', 'star', 'line', 'park',
     'lab', 'bay', 'top', 'list', 'box', 'way', 'point', 'spot', 'field', 'house'] AS site2,
    ['ru', 'com', 'net', 'org', 'ua', 'by', 'kz'] AS tlds,
    ['catalog', 'news', 'article', 'item', 'forum', 'photo', 'video', 'search', 'user', 'blog',
     'shop', 'product', 'category', 'tag', 'page', 'view'] AS sections,
    ['google', 'yandex', 'direct', 'vk', 'mail', 'begun', 'ok', 'facebook', 'twitter', 'rambler',
     'price', 'market', 'email', 'partner', 'banner', 'teaser'] AS utm_sources,

    toUInt32(floor(exp(u_counter * log(20000.)))) AS c_rank,
    toInt32(if(c_rank = 1, 62, 1000 + (c_rank * 37) % 100003)) AS CounterID,
    if(u_heavy < 0.3, toUInt64(floor(100 * exp(u_user * log({users} / 100.)))), toUInt64(floor(u_user * {users}))) AS user_rank,
    intHash64(user_rank + 68719476736) AS uh, intHash64(user_rank + 137438953472) AS uh2,
    toInt64(bitAnd(uh, 9223372036854775807)) AS UserID,
    toUInt32(floor(exp((bitAnd(uh2, 65535) / 65536.) * log(3000.)))) AS r_rank,
    toInt32(multiIf(r_rank = 1, 229, r_rank = 2, 2, r_rank = 3, 213, 10 + (r_rank * 131) % 10007)) AS RegionID,
    bitAnd(bitShiftRight(uh2, 16), 255) < 31 AS is_mobile,
    bitShiftRight(uh2, 24) % 6 + 1 AS mobile_screen, bitShiftRight(uh2, 24) % 10 + 1 AS desktop_screen,
    toInt16(if(is_mobile, [320, 360, 375, 414, 768, 1024][mobile_screen],
                          [1366, 1920, 1280, 1440, 1600, 1024, 1680, 1536, 1360, 1280][desktop_screen])) AS ResolutionWidth,
    toInt16(ResolutionWidth - if(is_mobile, 0, bitAnd(bitShiftRight(uh2, 32), 31) * 8)) AS WindowClientWidth,
    toInt16(if(is_mobile, [568, 640, 667, 736, 1024, 768][mobile_screen],
                          [768, 1080, 1024, 900, 900, 768, 1050, 864, 768, 1024][desktop_screen])
            - 60 - bitAnd(bitShiftRight(uh2, 40), 127)) AS WindowClientHeight,
    toInt16(if(is_mobile, 1 + bitShiftRight(uh2, 48) % 60, 0)) AS MobilePhone,
    if(is_mobile, ['iPhone', 'iPad', 'GT-I9300', 'GT-I9100', 'GT-N7100', 'HTC One', 'Lumia 920', 'Xperia Z',
                   'Nexus 4', 'GT-S5830', 'GT-P3100', 'MI-ONE'][bitShiftRight(uh2, 48) % 12 + 1], '') AS MobilePhoneModel,
    toInt32(if(u_ip < 0.9, bitAnd(uh, 4294967295), bitAnd(hv, 4294967295))) AS ClientIP,

    toDateTime(1372636800 + toUInt32(floor(u_time * 2678000)) + hit * 90 + bitAnd(h2, 63)) AS EventTime,
    toDate(EventTime) AS EventDate,

    concat(if(c_rank % 3 = 0, 'www.', ''), site1[c_rank % 40 + 1], site2[intDiv(c_rank, 40) % 30 + 1], '.',
           tlds[c_rank % 7 + 1]) AS domain,
    toUInt32(floor(exp(u_page * log(50000.)))) AS p_rank,
    intHash64(p_rank * 100003 + c_rank) AS ph,
    concat('/', sections[ph % 16 + 1], '/', words[bitShiftRight(ph, 8) % 48 + 1], '-',
           words[bitShiftRight(ph, 16) % 48 + 1], '-', words[bitShiftRight(ph, 24) % 48 + 1], '-',
           toString(p_rank), '.html') AS page_path,
    concat('http://', domain, page_path,
           if(u_params < 0.35, concat('?utm_source=', utm_sources[bitAnd(bitShiftRight(hv, 32), 15) + 1],
                                      '&utm_medium=cpc&utm_campaign=', toString(bitShiftRight(hv, 36) % 500), '&sid=',
                                      toString(bitShiftRight(hv, 45) % 100000)), '')) AS URL,
    if(bitShiftRight(ph, 40) % 20 = 0, '',
       concat(rwords[bitShiftRight(ph, 8) % 48 + 1], ' ', rwords[bitShiftRight(ph, 16) % 48 + 1], ' ',
              rwords[bitShiftRight(ph, 24) % 48 + 1], if(bitShiftRight(ph, 32) % 300 = 0, ' - Google', ''),
              ' — ', rwords[c_rank % 48 + 1], ' ', site1[c_rank % 40 + 1])) AS Title,

    u_search < 0.45 AS search_visit,
    search_visit AND hit = 0 AS is_search,
    toUInt32(floor(exp(u_phrase * log(300000.)))) AS phrase_rank,
    intHash64(phrase_rank + 206158430208) AS qh,
    qh % 48 + 1 AS q1, bitShiftRight(qh, 8) % 48 + 1 AS q2, bitShiftRight(qh, 24) % 48 + 1 AS q3,
    bitShiftRight(qh, 16) % 3 = 0 AS q3_used, bitShiftRight(qh, 32) % 4 = 0 AS q4_used,
    toString(bitShiftRight(qh, 40) % 2020) AS q4,
    if(is_search, concat(rwords[q1], ' ', rwords[q2], if(q3_used, concat(' ', rwords[q3]), ''),
                         if(q4_used, concat(' ', q4), '')), '') AS SearchPhrase,
    concat(rwords_encoded[q1], '%20', rwords_encoded[q2], if(q3_used, concat('%20', rwords_encoded[q3]), ''),
           if(q4_used, concat('%20', q4), '')) AS encoded_phrase,
    toInt16(if(is_search, multiIf(u_engine < 0.6, 2, u_engine < 0.93, 3, 4 + toUInt16(u_engine * 1000) % 10), 0)) AS SearchEngineID,
    toUInt32(floor(exp(u_prev_page * log(50000.)))) AS prev_page,
    intHash64(prev_page * 100003 + c_rank) AS prev_ph,
    multiIf(is_search AND SearchEngineID = 3, concat('http://www.google.ru/search?q=', encoded_phrase, '&ie=utf-8&oe=utf-8'),
            is_search, concat('http://yandex.ru/yandsearch?text=', encoded_phrase, '&lr=', toString(RegionID)),
            hit > 0, concat('http://', domain, '/', sections[prev_ph % 16 + 1], '/', words[bitShiftRight(prev_ph, 8) % 48 + 1], '-',
                            words[bitShiftRight(prev_ph, 16) % 48 + 1], '-', words[bitShiftRight(prev_ph, 24) % 48 + 1], '-',
                            toString(prev_page), '.html'),
            u_ref < 0.6, concat('http://', site1[bitShiftRight(h3, 8) % 40 + 1], site2[bitShiftRight(h3, 16) % 30 + 1], '.',
                                tlds[bitShiftRight(h3, 24) % 7 + 1], '/', words[bitShiftRight(h3, 32) % 48 + 1], '/',
                                toString(bitShiftRight(h3, 44) % 10000)),
            '') AS Referer,
    toInt16(if(u_adv < 0.02, [2, 27, 13, 3, 12, 4, 16, 32][bitAnd(bitShiftRight(h6, 48), 7) + 1], 0)) AS AdvEngineID,
    toInt16(multiIf(AdvEngineID != 0, 3, search_visit, 2, hit > 0, -1,
                    u_ref < 0.6, multiIf(u_source < 0.15, 6, u_source < 0.3, 8, 1), 0)) AS TraficSourceID,
    toInt16(u_refresh < 0.08) AS IsRefresh,
    toInt16(u_dontcount < 0.03) AS DontCountHits,
    toInt16(u_link < 0.02) AS IsLink,
    toInt16(u_link > 0.997) AS IsDownload,
    toInt64(bitAnd(intHash64(n), 9223372036854775807)) AS WatchID,
    toInt64(cityHash64(URL)) AS URLHash,
    toInt64(cityHash64(Referer)) AS RefererHash
FROM numbers({count})
))sql",
                       fmt::arg("table", table), fmt::arg("first", first), fmt::arg("count", count),
                       fmt::arg("users", users), fmt::arg("rwords_encoded", encoded_words_array()));
}

std::string constants_user_sql(const std::string& table) {
    return fmt::format(
        "SELECT UserID FROM {} WHERE CounterID = 62 ORDER BY EventDate, UserID LIMIT 1", table);
}

std::string constants_hashes_sql(const std::string& table) {
    // The most frequent RefererHash and URLHash of CounterID 62 under Q41's and Q42's other
    // conditions, so those queries select rows as they do on the real data.
    return fmt::format(
        "SELECT (SELECT RefererHash FROM {0} WHERE CounterID = 62 AND IsRefresh = 0 AND "
        "TraficSourceID IN (-1, 6) "
        "AND RefererHash != toInt64(cityHash64('')) GROUP BY RefererHash ORDER BY count() DESC, "
        "RefererHash LIMIT 1), "
        "(SELECT URLHash FROM {0} WHERE CounterID = 62 AND IsRefresh = 0 AND DontCountHits = 0 "
        "GROUP BY URLHash ORDER BY count() DESC, URLHash LIMIT 1)",
        table);
}

std::string constants_keys_sql(const std::string& table, uint64_t rows, int count) {
    // Primary-key prefixes (CounterID, EventDate, UserID) and WatchIDs of `count` rows drawn
    // evenly from the table (WatchIDs are uniform hashes): ~8 * count candidates by a modulus
    // of WatchID, the first `count` in an order unrelated to the key.
    const uint64_t modulus = std::max<uint64_t>(1, rows / (8 * static_cast<uint64_t>(count)));
    return fmt::format(
        "SELECT CounterID, toString(EventDate), UserID, WatchID FROM {0} WHERE WatchID % {1} = 0 "
        "ORDER BY cityHash64(WatchID) LIMIT {2}",
        table, modulus, count);
}

std::vector<Query> clickbench_queries(const QueryConstants& c) {
    // ClickBench's 43 queries (clickhouse/queries.sql), numbered from 1. Changes for 18.16 and
    // for comparing results are listed per query; the ones every query got:
    //  - ties: ORDER BY gets the group keys appended where the original order leaves rows
    //    with equal sort values in any order (LIMIT would then pick different rows per run),
    //    so each result is a function of the data and can be compared between runs.
    const std::string tie = "tie-break keys appended to ORDER BY";
    const std::string month =
        "CounterID = 62 AND EventDate >= '2013-07-01' AND EventDate <= '2013-07-31'";
    std::string sum90 = "SUM(ResolutionWidth)";
    for (int i = 1; i < 90; ++i) sum90 += fmt::format(", SUM(ResolutionWidth + {})", i);
    std::vector<Query> q = {
        {"", "SELECT COUNT(*) FROM hits", ""},
        {"", "SELECT COUNT(*) FROM hits WHERE AdvEngineID <> 0", ""},
        {"", "SELECT SUM(AdvEngineID), COUNT(*), AVG(ResolutionWidth) FROM hits", ""},
        {"", "SELECT AVG(UserID) FROM hits", ""},
        {"", "SELECT COUNT(DISTINCT UserID) FROM hits", ""},
        {"", "SELECT COUNT(DISTINCT SearchPhrase) FROM hits", ""},
        {"", "SELECT MIN(EventDate), MAX(EventDate) FROM hits", ""},
        {"",
         "SELECT AdvEngineID, COUNT(*) FROM hits WHERE AdvEngineID <> 0 GROUP BY AdvEngineID ORDER "
         "BY COUNT(*) DESC, AdvEngineID",
         tie},
        {"",
         "SELECT RegionID, COUNT(DISTINCT UserID) AS u FROM hits GROUP BY RegionID ORDER BY u "
         "DESC, RegionID LIMIT 10",
         tie},
        {"",
         "SELECT RegionID, SUM(AdvEngineID), COUNT(*) AS c, AVG(ResolutionWidth), COUNT(DISTINCT "
         "UserID) FROM hits GROUP BY RegionID ORDER BY c DESC, RegionID LIMIT 10",
         tie},
        {"",
         "SELECT MobilePhoneModel, COUNT(DISTINCT UserID) AS u FROM hits WHERE MobilePhoneModel <> "
         "'' GROUP BY MobilePhoneModel ORDER BY u DESC, MobilePhoneModel LIMIT 10",
         tie},
        {"",
         "SELECT MobilePhone, MobilePhoneModel, COUNT(DISTINCT UserID) AS u FROM hits WHERE "
         "MobilePhoneModel <> '' GROUP BY MobilePhone, MobilePhoneModel ORDER BY u DESC, "
         "MobilePhone, MobilePhoneModel LIMIT 10",
         tie},
        {"",
         "SELECT SearchPhrase, COUNT(*) AS c FROM hits WHERE SearchPhrase <> '' GROUP BY "
         "SearchPhrase ORDER BY c DESC, SearchPhrase LIMIT 10",
         tie},
        {"",
         "SELECT SearchPhrase, COUNT(DISTINCT UserID) AS u FROM hits WHERE SearchPhrase <> '' "
         "GROUP BY SearchPhrase ORDER BY u DESC, SearchPhrase LIMIT 10",
         tie},
        {"",
         "SELECT SearchEngineID, SearchPhrase, COUNT(*) AS c FROM hits WHERE SearchPhrase <> '' "
         "GROUP BY SearchEngineID, SearchPhrase ORDER BY c DESC, SearchEngineID, SearchPhrase "
         "LIMIT 10",
         tie},
        {"",
         "SELECT UserID, COUNT(*) FROM hits GROUP BY UserID ORDER BY COUNT(*) DESC, UserID LIMIT "
         "10",
         tie},
        {"",
         "SELECT UserID, SearchPhrase, COUNT(*) FROM hits GROUP BY UserID, SearchPhrase ORDER BY "
         "COUNT(*) DESC, UserID, SearchPhrase LIMIT 10",
         tie},
        {"",
         "SELECT UserID, SearchPhrase, COUNT(*) FROM hits GROUP BY UserID, SearchPhrase ORDER BY "
         "UserID, SearchPhrase LIMIT 10",
         "ORDER BY UserID, SearchPhrase added (the original has no ORDER BY: any 10 groups)"},
        {"",
         "SELECT UserID, extract(minute FROM EventTime) AS m, SearchPhrase, COUNT(*) FROM hits "
         "GROUP BY UserID, m, SearchPhrase ORDER BY COUNT(*) DESC, UserID, m, SearchPhrase LIMIT "
         "10",
         tie},
        {"", fmt::format("SELECT UserID FROM hits WHERE UserID = {}", c.user_id),
         "UserID constant: one present in the generated data (the original's is not)"},
        {"", "SELECT COUNT(*) FROM hits WHERE URL LIKE '%google%'", ""},
        {"",
         "SELECT SearchPhrase, MIN(URL), COUNT(*) AS c FROM hits WHERE URL LIKE '%google%' AND "
         "SearchPhrase <> '' GROUP BY SearchPhrase ORDER BY c DESC, SearchPhrase LIMIT 10",
         tie},
        {"",
         "SELECT SearchPhrase, MIN(URL), MIN(Title), COUNT(*) AS c, COUNT(DISTINCT UserID) FROM "
         "hits WHERE Title LIKE '%Google%' AND URL NOT LIKE '%.google.%' AND SearchPhrase <> '' "
         "GROUP BY SearchPhrase ORDER BY c DESC, SearchPhrase LIMIT 10",
         tie},
        {"", "SELECT * FROM hits WHERE URL LIKE '%google%' ORDER BY EventTime, WatchID LIMIT 10",
         "tie-break WatchID appended; * is the 25 columns the table holds"},
        {"",
         "SELECT SearchPhrase FROM hits WHERE SearchPhrase <> '' ORDER BY EventTime, SearchPhrase "
         "LIMIT 10",
         "tie-break SearchPhrase appended (rows with the same EventTime)"},
        {"",
         "SELECT SearchPhrase FROM hits WHERE SearchPhrase <> '' ORDER BY SearchPhrase LIMIT 10",
         ""},
        {"",
         "SELECT SearchPhrase FROM hits WHERE SearchPhrase <> '' ORDER BY EventTime, SearchPhrase "
         "LIMIT 10",
         ""},
        {"",
         "SELECT CounterID, AVG(length(URL)) AS l, COUNT(*) AS c FROM hits WHERE URL <> '' GROUP "
         "BY CounterID HAVING COUNT(*) > 100000 ORDER BY l DESC, CounterID LIMIT 25",
         tie},
        {"",
         "SELECT replaceRegexpOne(Referer, '^https?://(?:www\\.)?([^/]+)/.*$', '\\1') AS k, "
         "AVG(length(Referer)) AS l, COUNT(*) AS c, MIN(Referer) FROM hits WHERE Referer <> '' "
         "GROUP BY k HAVING COUNT(*) > 100000 ORDER BY l DESC, k LIMIT 25",
         "REGEXP_REPLACE -> replaceRegexpOne (18.16 has no REGEXP_REPLACE); " + tie},
        {"", "SELECT " + sum90 + " FROM hits", ""},
        {"",
         "SELECT SearchEngineID, ClientIP, COUNT(*) AS c, SUM(IsRefresh), AVG(ResolutionWidth) "
         "FROM hits WHERE SearchPhrase <> '' GROUP BY SearchEngineID, ClientIP ORDER BY c DESC, "
         "SearchEngineID, ClientIP LIMIT 10",
         tie},
        {"",
         "SELECT WatchID, ClientIP, COUNT(*) AS c, SUM(IsRefresh), AVG(ResolutionWidth) FROM hits "
         "WHERE SearchPhrase <> '' GROUP BY WatchID, ClientIP ORDER BY c DESC, WatchID, ClientIP "
         "LIMIT 10",
         tie},
        {"",
         "SELECT WatchID, ClientIP, COUNT(*) AS c, SUM(IsRefresh), AVG(ResolutionWidth) FROM hits "
         "GROUP BY WatchID, ClientIP ORDER BY c DESC, WatchID, ClientIP LIMIT 10",
         tie},
        {"", "SELECT URL, COUNT(*) AS c FROM hits GROUP BY URL ORDER BY c DESC, URL LIMIT 10", tie},
        {"", "SELECT 1, URL, COUNT(*) AS c FROM hits GROUP BY 1, URL ORDER BY c DESC, URL LIMIT 10",
         tie},
        {"",
         "SELECT ClientIP, ClientIP - 1, ClientIP - 2, ClientIP - 3, COUNT(*) AS c FROM hits GROUP "
         "BY ClientIP, ClientIP - 1, ClientIP - 2, ClientIP - 3 ORDER BY c DESC, ClientIP LIMIT 10",
         tie},
        {"",
         "SELECT URL, COUNT(*) AS PageViews FROM hits WHERE " + month +
             " AND DontCountHits = 0 AND IsRefresh = 0 AND URL <> '' GROUP BY URL ORDER BY "
             "PageViews DESC, URL LIMIT 10",
         tie},
        {"",
         "SELECT Title, COUNT(*) AS PageViews FROM hits WHERE " + month +
             " AND DontCountHits = 0 AND IsRefresh = 0 AND Title <> '' GROUP BY Title ORDER BY "
             "PageViews DESC, Title LIMIT 10",
         tie},
        {"",
         "SELECT URL, COUNT(*) AS PageViews FROM hits WHERE " + month +
             " AND IsRefresh = 0 AND IsLink <> 0 AND IsDownload = 0 GROUP BY URL ORDER BY "
             "PageViews DESC, URL LIMIT 10 OFFSET 1000",
         tie},
        {"",
         "SELECT TraficSourceID, SearchEngineID, AdvEngineID, CASE WHEN (SearchEngineID = 0 AND "
         "AdvEngineID = 0) THEN Referer ELSE '' END AS Src, URL AS Dst, COUNT(*) AS PageViews FROM "
         "hits WHERE " +
             month +
             " AND IsRefresh = 0 GROUP BY TraficSourceID, SearchEngineID, AdvEngineID, Src, Dst "
             "ORDER BY PageViews DESC, TraficSourceID, SearchEngineID, AdvEngineID, Src, Dst LIMIT "
             "10 OFFSET 1000",
         tie},
        {"",
         fmt::format(
             "SELECT URLHash, EventDate, COUNT(*) AS PageViews FROM hits WHERE {} AND IsRefresh = "
             "0 AND TraficSourceID IN (-1, 6) AND RefererHash = {} GROUP BY URLHash, EventDate "
             "ORDER BY PageViews DESC, URLHash, EventDate LIMIT 10 OFFSET 100",
             month, c.referer_hash),
         "RefererHash constant: CounterID 62's most frequent one in the generated data; " + tie},
        {"",
         fmt::format("SELECT WindowClientWidth, WindowClientHeight, COUNT(*) AS PageViews FROM "
                     "hits WHERE {} AND IsRefresh = 0 AND DontCountHits = 0 AND URLHash = {} GROUP "
                     "BY WindowClientWidth, WindowClientHeight ORDER BY PageViews DESC, "
                     "WindowClientWidth, WindowClientHeight LIMIT 10 OFFSET 10000",
                     month, c.url_hash),
         "URLHash constant: CounterID 62's most frequent one in the generated data; " + tie},
        {"",
         "SELECT toStartOfMinute(EventTime) AS M, COUNT(*) AS PageViews FROM hits WHERE CounterID "
         "= 62 AND EventDate >= '2013-07-14' AND EventDate <= '2013-07-15' AND IsRefresh = 0 AND "
         "DontCountHits = 0 GROUP BY toStartOfMinute(EventTime) ORDER BY "
         "toStartOfMinute(EventTime) LIMIT 10 OFFSET 1000",
         "DATE_TRUNC('minute', EventTime) -> toStartOfMinute(EventTime) (18.16 has no DATE_TRUNC)"},
    };
    for (size_t i = 0; i < q.size(); ++i) q[i].name = fmt::format("Q{}", i + 1);
    return q;
}

std::vector<Query> point_lookup_queries(const std::string& t, const QueryConstants& c) {
    // Primary-key lookups: a few granules of every column read (marks first on a mark-cache
    // miss), the access pattern of the `marks` policy. Keys are rows of the data (see
    // constants_keys_sql); multi-row results are ordered so they compare between runs.
    std::vector<Query> q;
    const size_t keys =
        std::min({c.counters.size(), c.dates.size(), c.users.size(), c.watch_ids.size()});
    auto key = [&](size_t i) {
        return fmt::format("CounterID = {} AND EventDate = '{}' AND UserID = {}", c.counters[i],
                           c.dates[i], c.users[i]);
    };
    for (size_t i = 0; i < std::min<size_t>(keys, 4); ++i)
        q.push_back(
            {"", fmt::format("SELECT * FROM {} WHERE {} ORDER BY WatchID", t, key(i)), "", true});
    if (keys >= 5)
        q.push_back(
            {"",
             fmt::format("SELECT URL, Title, Referer FROM {} WHERE {} ORDER BY WatchID", t, key(4)),
             "", true});
    if (keys >= 6) {
        std::string tuples, watch, counters;
        for (size_t i = 0; i < keys; ++i) {
            tuples += fmt::format("{}({}, '{}', {})", i ? ", " : "", c.counters[i], c.dates[i],
                                  c.users[i]);
            watch += fmt::format("{}{}", i ? ", " : "", c.watch_ids[i]);
            counters += fmt::format("{}{}", i ? ", " : "", c.counters[i]);
        }
        q.push_back({"",
                     fmt::format("SELECT WatchID, EventTime, URL FROM {} WHERE (CounterID, "
                                 "EventDate, UserID) IN ({}) ORDER BY WatchID",
                                 t, tuples),
                     "", true});
        q.push_back({"",
                     fmt::format("SELECT WatchID, UserID, URL, SearchPhrase FROM {} WHERE "
                                 "CounterID IN ({}) AND WatchID IN ({}) ORDER BY WatchID",
                                 t, counters, watch),
                     "", true});
        q.push_back({"",
                     fmt::format("SELECT count(), sum(length(URL)), max(EventTime) FROM {} WHERE "
                                 "CounterID = {} AND EventDate = '{}'",
                                 t, c.counters[5], c.dates[5]),
                     "", true});
    }
    for (size_t i = 0; i < q.size(); ++i) q[i].name = fmt::format("PK{}", i + 1);
    return q;
}

}  // namespace liveio::bench::hits
